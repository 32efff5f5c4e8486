"""Skill packs: publish compiled skills to an S3-compatible bucket, list them, pull them elsewhere.

One machine compiles and publishes; every serving machine pulls. The bucket is the shared registry,
each machine's SQL index a view of what it has. The package owns one step per module:

    index.py    the index and tag documents: schema, canonical bytes, strict parsing of untrusted ones
    bucket.py   where packs live in a bucket, and bounded, verified reads of their documents
    publish.py  this home's artifacts -> blobs, index, then the tag (conditional put; immutable versions)
    pull.py     a pack -> verified blobs in this home's store, then its index rows (resumable)
    listing.py  the versions in a bucket, and those this index recorded
    codec.py    the zstd-planes encoding blobs travel in (bounded, streamed both ways)
    home.py     what publish and pull share locally (registry, store, progress bar)
"""

from skillforge.packs.index import ENCODINGS, PackEntry, PackIndex, PackSkill, parse_pack_spec
from skillforge.packs.listing import PackInfo, list_packs, local_packs
from skillforge.packs.publish import PublishResult, build_index, publish
from skillforge.packs.pull import PullResult, pull

__all__ = ["ENCODINGS", "PackEntry", "PackIndex", "PackInfo", "PackSkill", "PublishResult", "PullResult", "build_index",
           "list_packs", "local_packs", "parse_pack_spec", "publish", "pull"]
