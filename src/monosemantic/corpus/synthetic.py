"""Seeded synthetic domains: base64 blobs, hex digests, DNA sequences.

The paper found base64 and DNA features; planting these domains gives later stages a ground
truth to check the SAE against (the hypothesis proxies of the interpret stage).
"""

from __future__ import annotations

import base64
import random
from typing import Callable, Iterator

from monosemantic.corpus import Document
from monosemantic.params import SyntheticSource

_WORDS = "data payload image attachment blob token key value checksum record sample file".split()


def base64_doc(rng: random.Random) -> str:
    blob = base64.b64encode(rng.randbytes(rng.randint(48, 900))).decode()
    lines = [blob[i : i + 76] for i in range(0, len(blob), 76)]
    style = rng.randrange(3)
    if style == 0:
        return f'{{"{rng.choice(_WORDS)}": "{blob}"}}'
    if style == 1:
        return "Content-Transfer-Encoding: base64\n\n" + "\n".join(lines)
    return f"{rng.choice(_WORDS)} = \"data:image/png;base64,{blob}\""


def hex_doc(rng: random.Random) -> str:
    lines = []
    for _ in range(rng.randint(2, 12)):
        digest = rng.randbytes(rng.choice((16, 20, 32))).hex()
        name = f"{rng.choice(_WORDS)}-{rng.randint(0, 999)}.tar.gz"
        lines.append(rng.choice((f"{digest}  {name}", f"commit {digest}", f"sha256:{digest}")))
    return "\n".join(lines)


def dna_doc(rng: random.Random) -> str:
    n = rng.randint(120, 1500)
    seq = "".join(rng.choices("ACGT", k=n))
    body = "\n".join(seq[i : i + 70] for i in range(0, n, 70))
    return f">seq{rng.randint(0, 99999)} {rng.choice(_WORDS)} sample\n{body}"


GENERATORS: dict[str, Callable[[random.Random], str]] = {
    "base64": base64_doc, "hex": hex_doc, "dna": dna_doc,
}


def documents(src: SyntheticSource, seed: int) -> Iterator[Document]:
    """An endless round-robin over the domains; the corpus budget decides where it stops."""
    rng = random.Random(seed)
    n = 0
    while True:
        for domain in src.domains:
            yield Document(f"synthetic:{domain}/{n}", f"synthetic/{domain}", GENERATORS[domain](rng))
            n += 1


def describe(src: SyntheticSource) -> dict:
    return {"kind": "synthetic", "domains": list(src.domains), "generator": "python random.Random"}
