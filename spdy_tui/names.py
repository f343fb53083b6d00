"""Readable layer names: short forms that keep what tells the layers of a model apart.

A transformer block's layer becomes ``L<block>.<part>``, its part named by role::

    encoder.layer.0.attention.self.query   -> L0.attn.q     (key -> attn.k, value -> attn.v)
    encoder.layer.0.attention.output.dense -> L0.attn.out
    encoder.layer.0.intermediate.dense     -> L0.ffn.in
    encoder.layer.0.output.dense           -> L0.ffn.out

(and the decoder spellings ``self_attn.q_proj`` .. ``o_proj``, ``mlp.up_proj`` .., ``fc1`` / ``fc2``).
A name that is no such layer stays as it is when it fits ``width`` (conv nets: ``layer1.0.conv1``),
and is elided in the middle otherwise, both ends kept: ``elide_middle``.  The short forms are
unique across the model: names whose short forms collide fall back to middle elision, and names
that still collide are shown in full.
"""

from __future__ import annotations

import re
from collections import Counter

ELLIPSIS = "…"
DEFAULT_WIDTH = 24

# a numbered block: "<anything>.layer.3.<rest>", "layers.3.<rest>", "h.3.<rest>", "blocks.3.<rest>"
BLOCK = re.compile(r"^(?:.*\.)?(?:layer|layers|h|block|blocks)\.(\d+)\.(.+)$")
# the rest of a block's layer name -> its role
ROLES = {
    "attention.self.query": "attn.q",
    "attention.self.key": "attn.k",
    "attention.self.value": "attn.v",
    "attention.output.dense": "attn.out",
    "intermediate.dense": "ffn.in",
    "output.dense": "ffn.out",
    "self_attn.q_proj": "attn.q",
    "self_attn.k_proj": "attn.k",
    "self_attn.v_proj": "attn.v",
    "self_attn.o_proj": "attn.out",
    "self_attn.out_proj": "attn.out",
    "mlp.gate_proj": "ffn.gate",
    "mlp.up_proj": "ffn.up",
    "mlp.down_proj": "ffn.down",
    "fc1": "ffn.in",
    "fc2": "ffn.out",
}


def elide_middle(name: str, width: int) -> str:
    """``name`` if it fits ``width``, else its first and last characters around one ``…``.

    Of the ``width - 1`` characters kept, the tail gets the larger half (it names the layer's
    role): ``elide_middle("abcdefghij", 6) == "ab…hij"``."""
    if width < 1:
        raise ValueError(f"width must be at least 1, got {width}")
    if len(name) <= width:
        return name
    kept = width - 1
    head = kept // 2
    return name[:head] + ELLIPSIS + name[len(name) - (kept - head):]


def short_form(name: str, width: int = DEFAULT_WIDTH) -> str:
    """The short form of one layer name (not yet made unique; see ``short_names``)."""
    block = BLOCK.match(name)
    if block is not None:
        index, rest = block.groups()
        return elide_middle(f"L{index}.{ROLES.get(rest, rest)}", width)
    return elide_middle(name, width)


def short_names(names: list[str], width: int = DEFAULT_WIDTH) -> list[str]:
    """A short form per name, in order, unique across ``names`` (module docstring)."""
    shorts = [short_form(name, width) for name in names]
    for fallback in (lambda name: elide_middle(name, width), lambda name: name):
        counts = Counter(shorts)
        if max(counts.values(), default=1) == 1:
            return shorts
        shorts = [fallback(name) if counts[short] > 1 else short for name, short in zip(names, shorts)]
    return shorts if len(set(shorts)) == len(shorts) else list(names)


def legend(names: list[str], width: int = DEFAULT_WIDTH) -> str:
    """``short = full`` lines for every name that was shortened (a tooltip); empty if none was."""
    return "\n".join(f"{short} = {name}" for name, short in zip(names, short_names(names, width)) if short != name)
