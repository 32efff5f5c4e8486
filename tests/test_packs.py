"""Packs end to end against a real S3 HTTP endpoint on loopback (moto's server), with every machine's
index on SQLite and, again, on PostgreSQL: publish, list, pull, immutability, shared blobs, resumed
and refused pulls, per-model pulls, racing publishers, and the CLI.

Each "machine" is its own index and local blob store; the bucket is the only thing they share.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import boto3
import numpy as np
import pytest
from s3server import (FP_A, FP_B, artifact_bytes, aws_env, fake_compile, make_meta, new_bucket, pg_base_url,
                      pg_database, pg_schema, s3_endpoint, sha)

from skillforge.errors import BadReference, CorruptBlob, NotFound, PackError
from skillforge.packs import build_index, codec, list_packs, local_packs, publish, pull
from skillforge.registry import Registry, gc
from skillforge.registry.packs import list_recorded_packs
from skillforge.store import LocalStore
from skillforge.store.s3 import S3Store


@dataclass
class Machine:
    label: str
    root: Path
    registry: Registry
    store: LocalStore

    def tmp_files(self) -> list[str]:
        tmp = self.root / "blobs" / "tmp"
        return sorted(p.name for p in tmp.iterdir()) if tmp.exists() else []


@pytest.fixture(scope="module")
def pg_db() -> Iterator[str]:
    """One fresh PostgreSQL database per module; every machine of every test gets its own schema in it."""
    with pg_database(pg_base_url()) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def machines(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[str], Machine]]:
    made: list[Machine] = []

    def make(label: str) -> Machine:
        if request.param == "sqlite":
            url = f"sqlite:///{tmp_path / label / 'index.sqlite'}"
        else:
            url = pg_schema(request.getfixturevalue("pg_db"))
        machine = Machine(label, tmp_path / label, Registry(url), LocalStore(tmp_path / label))
        made.append(machine)
        return machine

    yield make
    for machine in made:
        machine.registry.close()


@pytest.fixture
def root(monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket on the loopback S3 endpoint, reached through AWS_ENDPOINT_URL."""
    aws_env(monkeypatch, s3_endpoint())
    return f"s3://{new_bucket()}/prod"


def bucket_of(root: str) -> str:
    return root.removeprefix("s3://").split("/")[0]


def objects(root: str) -> list[str]:
    resp = boto3.client("s3").list_objects_v2(Bucket=bucket_of(root))
    return sorted(o["Key"] for o in resp.get("Contents", []))


def overwrite(root: str, key: str, data: bytes) -> None:
    boto3.client("s3").put_object(Bucket=bucket_of(root), Key=key, Body=data)


def encoded_key(digest: str) -> str:
    return f"prod/blobs/zstd-planes/sha256/{digest[7:]}"


def encode_bytes(data: bytes, tmp: Path, width: int = 4, head: int = 0) -> bytes:
    """`data` as a zstd-planes object (what publish uploads), via the codec itself."""
    src, dst = tmp / "plain.bin", tmp / "encoded.bin"
    src.write_bytes(data)
    codec.encode(src, dst, width, head)
    return dst.read_bytes()


def count_gets(remote: S3Store) -> list[str]:
    """Keys of every GetObject the store's client sends (boto3's own event hooks, nothing patched)."""
    keys: list[str] = []
    remote.client.meta.events.register("provide-client-params.s3.GetObject",
                                       lambda params, **_: keys.append(params["Key"]))
    return keys


def compile_two(m: Machine, version: str = "1.0.0", nbytes: int = 20_000) -> list[str]:
    return [fake_compile(m.registry, m.store, "refund-desk", version, nbytes=nbytes),
            fake_compile(m.registry, m.store, "pirate-voice", "2.1.0", nbytes=nbytes)]


# -- publish, list, pull -------------------------------------------------------------------------

def test_publish_list_pull_on_an_empty_home(machines: Callable[[str], Machine], root: str) -> None:
    a, b = machines("a"), machines("b")
    digests = compile_two(a)
    result = publish(["refund-desk@1.0.0", "pirate-voice"], "support@1.0.0", root, registry=a.registry, store=a.store)
    assert result.created and result.uploaded == 2 and result.artifacts == 2
    assert result.skills == ["pirate-voice@2.1.0", "refund-desk@1.0.0"]
    assert result.ref == f"{root}/support@1.0.0"
    keys = objects(root)
    assert [k for k in keys if "/blobs/" in k] == sorted(encoded_key(d) for d in digests)  # zstd-planes only
    assert "prod/packs/support/1.0.0.json" in keys
    assert f"prod/packs/support/1.0.0/{result.index_digest[7:]}.json" in keys

    [info] = list_packs(root)
    assert (info.name, info.version, info.index_digest, info.error) == ("support", "1.0.0", result.index_digest, None)
    assert info.skills == result.skills and info.fingerprints == {FP_A: 2}
    assert info.bytes == sum(a.store.size(d) for d in digests)

    pulled = pull(f"{root}/support@1.0.0", registry=b.registry, store=b.store)
    assert sorted(pulled.downloaded) == sorted(digests) and pulled.recorded == 2 and pulled.skipped == 0
    assert sorted(b.store.digests()) == sorted(digests) and all(b.store.verify(d) for d in digests)
    assert b.registry.find_artifact("refund-desk", FP_A).digest == digests[0]
    assert b.registry.list_artifacts() == a.registry.list_artifacts()
    [pack] = list_recorded_packs(b.registry)
    assert (pack.source, pack.name, pack.version, pack.index_digest) == (root, "support", "1.0.0", result.index_digest)
    assert sorted(x.digest for x in pack.artifacts) == sorted(digests)
    assert [p["name"] for p in local_packs(a.registry)] == ["support"]  # the publisher records it too
    assert b.tmp_files() == []
    # the manifests travelled: the skill versions are registered with them
    from skillforge.registry.packs import skill_version
    assert skill_version(b.registry, "refund-desk", "1.0.0")["manifest"]["name"] == "refund-desk"

    again = pull(f"{root}/support@1.0.0", registry=b.registry, store=b.store)
    assert again.downloaded == [] and again.skipped == 2 and again.recorded == 0
    # gc keeps what packs name, even a blob whose artifact row is dropped
    b.registry.remove_artifact(digests[0])
    assert gc(b.registry, b.store, grace_s=0)["removed"] == 0 and b.store.has(digests[0])


def test_published_versions_are_immutable(machines: Callable[[str], Machine], root: str) -> None:
    a, b = machines("a"), machines("b")
    compile_two(a)
    first = publish(["refund-desk", "pirate-voice"], "support@1.0.0", root, registry=a.registry, store=a.store)
    same = publish(["pirate-voice", "refund-desk@1.0.0"], "support@1.0.0", root, registry=a.registry, store=a.store)
    assert same.index_digest == first.index_digest and not same.created and same.uploaded == 0
    fake_compile(a.registry, a.store, "refund-desk", "1.1.0")
    before = objects(root)
    with pytest.raises(PackError, match="already published with other content.*immutable"):
        publish(["refund-desk@1.1.0"], "support@1.0.0", root, registry=a.registry, store=a.store)
    assert objects(root) == before  # nothing uploaded
    assert pull(f"{root}/support@1.0.0", registry=b.registry, store=b.store).index_digest == first.index_digest
    with pytest.raises(NotFound, match="no pack support@9.9.9"):
        pull(f"{root}/support@9.9.9", registry=b.registry, store=b.store)
    with pytest.raises(BadReference):
        pull(f"{root}/../support@1.0.0", registry=b.registry, store=b.store)


def test_shared_blobs_are_stored_and_moved_once(machines: Callable[[str], Machine], root: str) -> None:
    a, b = machines("a"), machines("b")
    shared = fake_compile(a.registry, a.store, "shared", nbytes=30_000)
    only1 = fake_compile(a.registry, a.store, "only-one", nbytes=30_000)
    only2 = fake_compile(a.registry, a.store, "only-two", nbytes=30_000)
    p1 = publish(["shared", "only-one"], "one@1.0.0", root, registry=a.registry, store=a.store)
    p2 = publish(["shared", "only-two"], "two@1.0.0", root, registry=a.registry, store=a.store)
    assert (p1.uploaded, p2.uploaded) == (2, 1)
    assert len([k for k in objects(root) if "/blobs/" in k]) == 3
    assert [i.name for i in list_packs(root)] == ["one", "two"]
    # b compiled "shared" itself (same text, other bytes): its own artifact keeps serving, the pack's blob
    # is kept for the pack (and by gc)
    own = fake_compile(b.registry, b.store, "shared", nbytes=30_000, created="2025-06-01T00:00:00+00:00")
    first = pull(f"{root}/one@1.0.0", registry=b.registry, store=b.store)
    assert sorted(first.downloaded) == sorted([shared, only1]) and first.recorded == 1
    assert b.registry.find_artifact("shared", FP_A).digest == own
    assert gc(b.registry, b.store, grace_s=0)["removed"] == 0 and b.store.has(shared)
    second = pull(f"{root}/two@1.0.0", registry=b.registry, store=b.store)
    assert second.downloaded == [only2] and second.skipped == 1
    # a machine that registered shared@1.0.0 with another text refuses the pack before downloading
    c = machines("c")
    fake_compile(c.registry, c.store, "shared", text="a different text for {who}")
    with pytest.raises(PackError, match="shared@1.0.0 .*bump the version"):
        pull(f"{root}/one@1.0.0", registry=c.registry, store=c.store)
    assert len(list(c.store.digests())) == 1 and list_recorded_packs(c.registry) == []


def test_interrupted_pull_resumes_without_downloading_again(machines: Callable[[str], Machine], root: str) -> None:
    a, b = machines("a"), machines("b")
    digests = [fake_compile(a.registry, a.store, f"skill-{i}", nbytes=40_000) for i in range(3)]
    publish([f"skill-{i}" for i in range(3)], "bundle@1.0.0", root, registry=a.registry, store=a.store)

    class Interrupted(Exception):
        pass

    done: list[str] = []

    def stop_after_first(digest: str) -> None:
        done.append(digest)
        raise Interrupted

    remote = S3Store.from_url(root)
    gets = count_gets(remote)
    with pytest.raises(Interrupted):
        pull(f"{root}/bundle@1.0.0", registry=b.registry, store=b.store, remote=remote, on_blob=stop_after_first)
    assert list(b.store.digests()) == done and b.tmp_files() == []
    assert b.registry.list_artifacts() == [] and list_recorded_packs(b.registry) == []  # the index is untouched

    gets.clear()
    resumed = pull(f"{root}/bundle@1.0.0", registry=b.registry, store=b.store, remote=remote)
    blob_gets = {k.rsplit("/", 1)[1] for k in gets if "/blobs/" in k}
    assert blob_gets == {d[7:] for d in digests} - {done[0][7:]}  # the completed blob was not fetched again
    assert resumed.skipped == 1 and sorted(resumed.downloaded + done) == sorted(digests)
    assert len(b.registry.list_artifacts()) == 3


# -- blobs travel zstd-planes encoded ------------------------------------------------------------

@pytest.mark.parametrize("width", [1, 2, 4, 8])
def test_codec_round_trips_any_size_in_blocks(tmp_path: Path, width: int) -> None:
    head = b"H" * 1001  # a header of odd length: values in the body are aligned from there
    body = np.random.default_rng(width).standard_normal(codec.BLOCK // 2 + 7).astype(np.float32).tobytes()
    data = head + body[: 2 * codec.BLOCK + 3]  # several blocks, the last not a multiple of any width
    src, enc, out = tmp_path / "src", tmp_path / "enc", tmp_path / "out"
    src.write_bytes(data)
    size = codec.encode(src, enc, width, len(head))
    assert size == enc.stat().st_size <= codec.max_encoded_size(len(data))
    assert codec.decode(enc, out, len(data), "test") == sha(data) and out.read_bytes() == data
    out.unlink()
    codec.decode(enc, out, len(data), "test")
    assert out.read_bytes() == data  # deterministic


def test_planes_compress_float_kv_better(tmp_path: Path) -> None:
    """The reason for the planes: sign and exponent bytes repeat, mantissa bytes do not."""
    src = tmp_path / "kv"
    src.write_bytes(np.random.default_rng(0).standard_normal(1_000_000).astype(np.float32).tobytes())
    plain = codec.encode(src, tmp_path / "w1", 1, 0)
    planes = codec.encode(src, tmp_path / "w4", 4, 0)
    assert planes < 0.95 * plain < 0.99 * src.stat().st_size


def test_codec_refuses_what_it_did_not_write_or_more_than_recorded(tmp_path: Path) -> None:
    data = os.urandom(300_000)
    src, enc, out = tmp_path / "src", tmp_path / "enc", tmp_path / "out"
    src.write_bytes(data)
    codec.encode(src, enc, 4, 0)
    with pytest.raises(CorruptBlob, match="decompresses beyond the 299999 bytes"):
        codec.decode(enc, out, len(data) - 1, "blob")
    with pytest.raises(CorruptBlob, match="ends after fewer bytes"):
        codec.decode(enc, out, len(data) + 1, "blob")
    import zstandard
    (tmp_path / "plainzstd").write_bytes(zstandard.ZstdCompressor().compress(data))
    with pytest.raises(CorruptBlob, match="not a zstd-planes blob"):
        codec.decode(tmp_path / "plainzstd", out, len(data), "blob")
    (tmp_path / "junk").write_bytes(b"\x00" * 100)
    with pytest.raises(CorruptBlob, match="damaged"):
        codec.decode(tmp_path / "junk", out, len(data), "blob")


def test_format_1_packs_stay_pullable_and_republishable(machines: Callable[[str], Machine], root: str) -> None:
    """What skillforge published before zstd: plain blobs and a format 1 index. Pullable as they are,
    and republishing the same skills is the same content (no conflict), repairing with plain blobs."""
    a, b = machines("a"), machines("b")
    digests = compile_two(a)
    doc = build_index(a.registry, "legacy", "1.0.0", ["refund-desk", "pirate-voice"]).to_dict()
    doc["format"] = "skillforge.pack/1"
    for items in doc["artifacts"].values():
        for item in items:
            assert item.pop("encoding") == "zstd-planes"
    data = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    s3 = boto3.client("s3")
    for d in digests:
        s3.put_object(Bucket=bucket_of(root), Key=f"prod/blobs/sha256/{d[7:]}", Body=a.store.read_bytes(d),
                      Metadata={"sha256": d[7:]})
    overwrite(root, f"prod/packs/legacy/1.0.0/{sha(data)[7:]}.json", data)
    overwrite(root, "prod/packs/legacy/1.0.0.json", json.dumps(
        {"format": "skillforge.pack-tag/1", "name": "legacy", "version": "1.0.0", "index": sha(data),
         "size": len(data), "published": "2025-01-01T00:00:00+00:00"}).encode())

    got = pull(f"{root}/legacy@1.0.0", registry=b.registry, store=b.store)
    assert sorted(got.downloaded) == sorted(digests) and got.received_bytes == got.downloaded_bytes
    assert b.registry.list_artifacts() == a.registry.list_artifacts()

    s3.delete_object(Bucket=bucket_of(root), Key=f"prod/blobs/sha256/{digests[0][7:]}")
    again = publish(["refund-desk", "pirate-voice"], "legacy@1.0.0", root, registry=a.registry, store=a.store)
    assert (again.created, again.index_digest, again.uploaded) == (False, sha(data), 1)
    assert [k for k in objects(root) if "/blobs/" in k] == sorted(f"prod/blobs/sha256/{d[7:]}" for d in digests)


def test_pull_progress_counts_to_the_size_of_the_blobs(machines: Callable[[str], Machine], root: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """An encoded blob arrives in fewer bytes than it holds; the progress bar still ends at its total."""
    pull_mod = sys.modules["skillforge.packs.pull"]  # the package's `pull` names the function
    bars: list[dict] = []

    @contextmanager
    def recording_bar(total: int, desc: str, enabled: bool) -> Iterator[Any]:
        bar = {"total": total, "counted": 0}
        bars.append(bar)
        yield SimpleNamespace(update=lambda n: bar.__setitem__("counted", bar["counted"] + n))

    monkeypatch.setattr(pull_mod, "progress_bar", recording_bar)
    a, b = machines("a"), machines("b")
    compile_two(a)
    publish(["refund-desk", "pirate-voice"], "bar@1.0.0", root, registry=a.registry, store=a.store)
    got = pull(f"{root}/bar@1.0.0", registry=b.registry, store=b.store, progress=True)
    assert got.received_bytes < got.bytes  # encoded: fewer bytes on the wire
    assert bars == [{"total": got.bytes, "counted": got.bytes}]


def test_plain_encoding_for_fast_links_is_the_same_content(machines: Callable[[str], Machine], root: str) -> None:
    a, b = machines("a"), machines("b")
    digests = compile_two(a)
    plain = publish(["refund-desk", "pirate-voice"], "fast@1.0.0", root, registry=a.registry, store=a.store,
                    encoding="none")
    assert plain.sent_bytes == plain.uploaded_bytes == plain.bytes
    assert [k for k in objects(root) if "/blobs/" in k] == sorted(f"prod/blobs/sha256/{d[7:]}" for d in digests)
    again = publish(["refund-desk", "pirate-voice"], "fast@1.0.0", root, registry=a.registry, store=a.store)
    assert (again.created, again.index_digest, again.uploaded) == (False, plain.index_digest, 0)
    got = pull(f"{root}/fast@1.0.0", registry=b.registry, store=b.store)
    assert sorted(got.downloaded) == sorted(digests) and got.received_bytes == got.bytes
    with pytest.raises(PackError, match="unknown blob encoding 'gzip'"):
        publish(["refund-desk"], "odd@1.0.0", root, registry=a.registry, store=a.store, encoding="gzip")


# -- crashes ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("step", ["pull:download", "pull:verified", "pull:installed"])
def test_pull_killed_at_a_step_leaves_a_consistent_home(root: str, tmp_path: Path, step: str) -> None:
    """kill -9 at a named step (SKILLFORGE_CRASH_AT, no sleeps): nothing indexed, every blob present is
    intact, leftovers only in the staging folder; the rerun completes and `gc` leaves no staging bytes."""
    a = Machine("a", tmp_path / "a", Registry(f"sqlite:///{tmp_path / 'a' / 'index.sqlite'}"), LocalStore(tmp_path / "a"))
    digests = [fake_compile(a.registry, a.store, f"skill-{i}", nbytes=3_000_000) for i in range(3)]
    publish([f"skill-{i}" for i in range(3)], "big@1.0.0", root, registry=a.registry, store=a.store)
    a.registry.close()
    home = tmp_path / "b"
    exe = str(Path(sys.executable).parent / "skillforge")
    env = {**os.environ, "SKILLFORGE_HOME": str(home)}

    def run(*args: str, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([exe, *args], env={**env, **extra}, capture_output=True, text=True, timeout=300)

    killed = run("pull", f"{root}/big@1.0.0", "--json", SKILLFORGE_CRASH_AT=step)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    staging = home / "blobs" / "tmp"
    staged = sorted(staging.iterdir())
    store = LocalStore(home)
    with Registry(f"sqlite:///{home / 'index.sqlite'}") as reg:
        assert reg.list_artifacts() == [] and list_recorded_packs(reg) == []
    present = list(store.digests())
    assert set(present) <= set(digests) and all(store.verify(d) for d in present)
    assert len(present) == (1 if step == "pull:installed" else 0)
    assert staged  # what the kill left (the blobs in flight) is staged in the home, nowhere else

    rerun = run("pull", f"{root}/big@1.0.0", "--json")
    assert rerun.returncode == 0, rerun.stderr
    result = json.loads(rerun.stdout)
    assert sorted(result["downloaded"]) == sorted(set(digests) - set(present))
    assert result["skipped"] == len(present) and result["recorded"] == 3
    assert sorted(staging.iterdir()) == staged  # young leftovers stay until their grace has passed

    staged_bytes = sum(p.stat().st_size for p in staged)
    collected = run("gc", "--grace", "0", "--json")
    assert collected.returncode == 0, collected.stderr
    report = json.loads(collected.stdout)
    assert (report["removed"], report["staging_removed"], report["staging_freed_bytes"]) == (0, len(staged), staged_bytes)
    assert list(staging.iterdir()) == [] and sorted(store.digests()) == sorted(digests)


# -- untrusted input -----------------------------------------------------------------------------

def test_tampered_blob_is_refused_and_nothing_kept(machines: Callable[[str], Machine], root: str,
                                                   tmp_path: Path) -> None:
    a, b = machines("a"), machines("b")
    good = fake_compile(a.registry, a.store, "alpha", nbytes=20_000)
    bad = fake_compile(a.registry, a.store, "beta", nbytes=20_000)
    publish(["alpha", "beta"], "support@1.0.0", root, registry=a.registry, store=a.store)
    original = a.store.read_bytes(bad)
    forged = bytearray(original)
    forged[-1] ^= 0xFF  # same size, one bit of KV flipped
    overwrite(root, encoded_key(bad), encode_bytes(bytes(forged), tmp_path))
    with pytest.raises(CorruptBlob, match=f"{bad}.*corrupt.*not kept"):
        pull(f"{root}/support@1.0.0", registry=b.registry, store=b.store)
    assert list(b.store.digests()) == [] and b.tmp_files() == []  # not even the good blob it fetched first
    assert b.registry.list_artifacts() == [] and b.registry.referenced_digests() == set()

    # a bomb: decodes to far more than the index records; refused at the recorded size, nothing kept
    overwrite(root, encoded_key(bad), encode_bytes(original + bytes(50_000_000), tmp_path))
    with pytest.raises(CorruptBlob, match="decompresses beyond"):
        pull(f"{root}/support@1.0.0", registry=b.registry, store=b.store)
    assert list(b.store.digests()) == [] and b.tmp_files() == [] and b.registry.list_artifacts() == []
    # bigger than any honest encoding of the recorded size: refused before download
    overwrite(root, encoded_key(bad), os.urandom(2 * len(original)))
    with pytest.raises(CorruptBlob, match="at most"):
        pull(f"{root}/support@1.0.0", registry=b.registry, store=b.store)
    assert list(b.store.digests()) == [] and b.tmp_files() == [] and b.registry.list_artifacts() == []

    # republishing the same content repairs the pack: the overwritten object lacks skillforge's metadata
    fixed = publish(["alpha", "beta"], "support@1.0.0", root, registry=a.registry, store=a.store)
    assert not fixed.created and fixed.uploaded == 1
    assert sorted(pull(f"{root}/support@1.0.0", registry=b.registry, store=b.store).downloaded) == sorted([good, bad])


def test_tampered_or_hostile_index_is_refused(machines: Callable[[str], Machine], root: str) -> None:
    a, b = machines("a"), machines("b")
    fake_compile(a.registry, a.store, "alpha")
    result = publish(["alpha"], "support@1.0.0", root, registry=a.registry, store=a.store)
    index_key = f"prod/packs/support/1.0.0/{result.index_digest[7:]}.json"
    s3 = boto3.client("s3")
    original = s3.get_object(Bucket=bucket_of(root), Key=index_key)["Body"].read()
    doc = json.loads(original)
    doc["skills"][0]["description"] = "now with a different story"
    overwrite(root, index_key, json.dumps(doc).encode())
    with pytest.raises(PackError, match="index was tampered with"):
        pull(f"{root}/support@1.0.0", registry=b.registry, store=b.store)
    assert [i.error is not None for i in list_packs(root)] == [True]

    # A bucket writer who rewrites index and tag consistently still only supplies data: it is validated.
    def forge(mutate: Callable[[dict], None], version: str) -> None:
        forged = json.loads(original)
        forged["version"] = version
        mutate(forged)
        data = json.dumps(forged).encode()
        import hashlib
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        overwrite(root, f"prod/packs/support/{version}/{digest[7:]}.json", data)
        overwrite(root, f"prod/packs/support/{version}.json", json.dumps(
            {"format": "skillforge.pack-tag/1", "name": "support", "version": version, "index": digest,
             "size": len(data), "published": "now"}).encode())

    forge(lambda d: d["skills"][0].update(name="../../etc"), "2.0.0")
    with pytest.raises(PackError, match="invalid pack index.*invalid name"):
        pull(f"{root}/support@2.0.0", registry=b.registry, store=b.store)
    forge(lambda d: d["artifacts"].update({"fp:\n../x": d["artifacts"].pop(FP_A)}), "2.0.1")
    with pytest.raises(PackError, match="invalid model fingerprint"):
        pull(f"{root}/support@2.0.1", registry=b.registry, store=b.store)
    forge(lambda d: d["skills"][0]["manifest"].update(template="Something else"), "2.0.2")
    with pytest.raises(PackError, match="renders to"):
        pull(f"{root}/support@2.0.2", registry=b.registry, store=b.store)

    # a blob that is not an artifact at all (valid digest and size in a consistent index)
    junk = b"#!/bin/sh\nrm -rf /\n" * 100
    import hashlib
    junk_digest = "sha256:" + hashlib.sha256(junk).hexdigest()
    overwrite(root, f"prod/blobs/sha256/{junk_digest[7:]}", junk)

    def swap_blob(d: dict) -> None:
        d["artifacts"][FP_A][0].update(digest=junk_digest, size=len(junk), encoding="none")

    forge(swap_blob, "2.0.3")
    with pytest.raises(CorruptBlob, match="not a safetensors file|header"):
        pull(f"{root}/support@2.0.3", registry=b.registry, store=b.store)

    # a real artifact listed under another skill's name
    other = make_meta("beta", text="beta text")
    data = artifact_bytes(other)
    other_digest = "sha256:" + hashlib.sha256(data).hexdigest()
    overwrite(root, f"prod/blobs/sha256/{other_digest[7:]}", data)

    def mislabel(d: dict) -> None:
        d["artifacts"][FP_A][0].update(digest=other_digest, size=len(data), encoding="none")

    forge(mislabel, "2.0.4")
    with pytest.raises(PackError, match="is an artifact of beta@1.0.0"):
        pull(f"{root}/support@2.0.4", registry=b.registry, store=b.store)

    assert list(b.store.digests()) == [] and b.tmp_files() == []
    assert b.registry.list_artifacts() == [] and list_recorded_packs(b.registry) == []


def test_pull_only_one_models_artifacts(machines: Callable[[str], Machine], root: str) -> None:
    a, b = machines("a"), machines("b")
    for_a = [fake_compile(a.registry, a.store, name, fingerprint=FP_A) for name in ("alpha", "beta")]
    for_b = [fake_compile(a.registry, a.store, name, fingerprint=FP_B) for name in ("alpha", "beta")]
    published = publish(["alpha", "beta"], "support@1.0.0", root, registry=a.registry, store=a.store)
    assert published.fingerprints == [FP_A, FP_B] and published.artifacts == 4
    assert list_packs(root)[0].fingerprints == {FP_A: 2, FP_B: 2}

    got = pull(f"{root}/support@1.0.0", fingerprint=FP_B, registry=b.registry, store=b.store)
    assert sorted(got.downloaded) == sorted(for_b) and got.fingerprints == [FP_B]
    assert sorted(b.store.digests()) == sorted(for_b)
    assert {r.fingerprint for r in b.registry.list_artifacts()} == {FP_B}
    with pytest.raises(NotFound, match="no artifacts for model fp fp:cccc.*fp:aaaa"):
        pull(f"{root}/support@1.0.0", fingerprint="fp:" + "c" * 16, registry=b.registry, store=b.store)

    more = pull(f"{root}/support@1.0.0", fingerprint=FP_A, registry=b.registry, store=b.store)
    assert sorted(more.downloaded) == sorted(for_a)
    [pack] = list_recorded_packs(b.registry)
    assert sorted(x.digest for x in pack.artifacts) == sorted(for_a + for_b)

    only_a = publish(["alpha"], "alpha-only@1.0.0", root, registry=a.registry, store=a.store, fingerprint=FP_A)
    assert only_a.fingerprints == [FP_A] and only_a.artifacts == 1


def test_racing_publishers_exactly_one_wins(machines: Callable[[str], Machine], root: str) -> None:
    for round_ in range(1):  # raise to stress the race (60 rounds on moto gave no double winner)
        version = f"1.{round_}.0"
        pubs = [machines(f"pub{round_}-{i}") for i in range(2)]
        for i, m in enumerate(pubs):
            for j in range(3):
                fake_compile(m.registry, m.store, f"s{j}", text=f"publisher {i} skill {j}", nbytes=10_000)
        barrier = threading.Barrier(2)
        outcomes: dict[int, object] = {}

        def run(i: int) -> None:
            try:
                outcomes[i] = publish(["s0", "s1", "s2"], f"race@{version}", root, registry=pubs[i].registry,
                                      store=pubs[i].store, before_visible=lambda: barrier.wait(30))
            except Exception as exc:  # noqa: BLE001 - the test inspects it
                outcomes[i] = exc

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        winners = [i for i, o in outcomes.items() if not isinstance(o, Exception)]
        losers = [o for o in outcomes.values() if isinstance(o, Exception)]
        assert len(winners) == 1 and len(losers) == 1, outcomes
        assert isinstance(losers[0], PackError) and "concurrently" in str(losers[0])
        winner = outcomes[winners[0]]
        assert winner.created
        # the visible version is the winner's, intact and complete
        reader = machines(f"reader{round_}")
        got = pull(f"{root}/race@{version}", registry=reader.registry, store=reader.store)
        assert got.index_digest == winner.index_digest
        assert {r.digest for r in reader.registry.list_artifacts()} == \
            {r.digest for r in pubs[winners[0]].registry.list_artifacts()}
        index_objects = [k for k in objects(root) if k.startswith(f"prod/packs/race/{version}/")]
        assert index_objects == [f"prod/packs/race/{version}/{winner.index_digest[7:]}.json"]  # loser's removed


def test_endpoint_ignoring_conditional_writes_is_refused(machines: Callable[[str], Machine], root: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import skillforge.store.s3 as s3mod

    a = machines("a")
    fake_compile(a.registry, a.store, "alpha")
    monkeypatch.setattr(s3mod, "_conditional_support", {})
    remote = S3Store.from_url(root)

    def drop_condition(request, **_):  # an endpoint that ignores If-None-Match behaves like this
        if "If-None-Match" in request.headers:
            del request.headers["If-None-Match"]

    remote.client.meta.events.register("before-sign.s3.PutObject", drop_condition)
    with pytest.raises(PackError, match="ignores conditional writes"):
        publish(["alpha"], "support@1.0.0", root, registry=a.registry, store=a.store, remote=remote)
    assert [k for k in objects(root) if "/packs/support" in k] == []


def test_cli_publish_ls_pull(root: str, tmp_path: Path) -> None:
    """The commands, each reading its home from SKILLFORGE_HOME like every other command."""
    from typer.testing import CliRunner

    from skillforge.cli.main import app

    a = Machine("a", tmp_path / "a", Registry(f"sqlite:///{tmp_path / 'a' / 'index.sqlite'}"), LocalStore(tmp_path / "a"))
    compile_two(a)
    a.registry.close()
    runner = CliRunner()
    env_a = {"SKILLFORGE_HOME": str(a.root)}
    res = runner.invoke(app, ["publish", "refund-desk@1.0.0", "pirate-voice", "--pack", "support@1.0.0", "--to", root,
                              "--json"], env=env_a)
    assert res.exit_code == 0, res.output
    published = json.loads(res.stdout)
    assert published["created"] and published["uploaded"] == 2
    res = runner.invoke(app, ["packs", "ls", root, "--json"], env=env_a)
    assert res.exit_code == 0, res.output
    assert [(p["name"], p["version"]) for p in json.loads(res.stdout)] == [("support", "1.0.0")]
    res = runner.invoke(app, ["packs", "ls", root], env=env_a)
    assert "support" in res.stdout and "1.0.0" in res.stdout

    home_b = tmp_path / "b-home"
    res = runner.invoke(app, ["pull", f"{root}/support@1.0.0", "--fingerprint", FP_A, "--json"],
                        env={"SKILLFORGE_HOME": str(home_b)})
    assert res.exit_code == 0, res.output
    assert len(json.loads(res.stdout)["downloaded"]) == 2
    with Registry(f"sqlite:///{home_b / 'index.sqlite'}") as reg_b:
        assert len(reg_b.list_artifacts()) == 2
    res = runner.invoke(app, ["packs", "ls", "--json"], env={"SKILLFORGE_HOME": str(home_b)})
    assert [p["name"] for p in json.loads(res.stdout)] == ["support"]

    res = runner.invoke(app, ["publish", "refund-desk@1.0.0", "--pack", "support@1.0.0", "--to", root],
                        env=env_a)
    assert res.exit_code != 0 and isinstance(res.exception, PackError)
