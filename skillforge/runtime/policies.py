"""Edit policies that choose between or combine several splices (the modes are in runtime/edits.py).

  auto      splice field+erratum and in-place; keep in-place when its next-token decision is the same.
  contrast  splice field+erratum, the stale skill and the null erratum; decode the three together
            (log p(field+erratum) + log p(stale) - log p(null), see runtime/decode.py).

Each takes the facade's `splice` (Runtime.splice) to make the splices it needs, so it knows nothing of
where artifacts come from.
"""

from __future__ import annotations

import time
from dataclasses import replace
from functools import partial
from typing import Any, Callable

from skillforge.errors import EditError
from skillforge.runtime.decode import next_logits
from skillforge.runtime.edits import NULL_ERRATUM
from skillforge.runtime.repair import Repair
from skillforge.runtime.splice import Resolved, SpliceResult

SpliceFn = Callable[..., SpliceResult]


def splice_auto(splice: SpliceFn, context: Any, resolved: list[Resolved], repair: Repair, rotate: bool,
                extra_capacity: int, t0: float) -> SpliceResult:
    """Pick in-place when its next-token decision equals field+erratum's, else field+erratum."""
    run = partial(splice, skills=resolved, repair=repair, rotate=rotate, extra_capacity=extra_capacity)
    full = run(context, edit_mode="field+erratum")
    full_top = int(next_logits(full).argmax())
    full.cache.crop(-1)  # undo the diagnostic step: the result again ends before the last token
    try:
        inplace = run(context, edit_mode="in-place")
    except EditError:
        picked = full
    else:
        picked = inplace if int(next_logits(inplace).argmax()) == full_top else full
        if picked is inplace:
            inplace.cache.crop(-1)
    mode = "in-place" if picked is not full else "field+erratum"
    for e in picked.edits:
        e["mode"] = f"auto:{mode}"
    picked.splice_ms = (time.perf_counter() - t0) * 1000
    return picked


def splice_contrast(splice: SpliceFn, context: Any, resolved: list[Resolved], repair: Repair, rotate: bool,
                    extra_capacity: int, t0: float) -> SpliceResult:
    """field+erratum, guided by the stale splice (+1) and the null-erratum splice (-1): see
    runtime/edits.py. Each edit's tokens_computed adds the null erratum's tokens."""
    run = partial(splice, skills=resolved, repair=repair, rotate=rotate, extra_capacity=extra_capacity)
    main = run(context, edit_mode="field+erratum")
    if not main.edits:  # every value equals the compiled one: nothing to contrast
        return main
    stale = run(replace(context, set={}))
    null = run(context, edit_mode=NULL_ERRATUM)
    for e, n in zip(main.edits, null.edits):
        e["tokens_computed"] += n["tokens_computed"]
        e["mode"] = "contrast"
    main.guides = [(stale, 1.0), (null, -1.0)]
    main.splice_ms = (time.perf_counter() - t0) * 1000
    return main
