"""Corpus tokens as HTML: the one place untrusted text becomes markup, so it is escaped here.

Tokens are shaded by activation ÷ the unit's maximum (the CSS maps `--a` to a colour); the
exact value shows on hover. Control characters are drawn as visible symbols (a newline as ↵)
so whitespace-only tokens can be seen and an example stays one block.
"""

from __future__ import annotations

from typing import Sequence

from markupsafe import Markup

# One translate table both escapes HTML and makes control characters visible: it runs on every
# token of every page, so it must be fast, and it is the only escaping tokens get.
_HTML = {c: chr(0x2400 + c) for c in range(32) if c != 9} | {10: "↵", 127: "␡"} | {
    ord("&"): "&amp;", ord("<"): "&lt;", ord(">"): "&gt;", ord('"'): "&#34;", ord("'"): "&#39;"}


def html(token: str) -> str:
    """A token as HTML text: escaped, whitespace visible."""
    return token.translate(_HTML)


def token_text(token: str) -> Markup:
    """A token shown on its own (logit effects): escaped, whitespace visible, ∅ if empty."""
    return Markup(f'<span class="tok">{html(token) or "∅"}</span>')


def example(tokens: Sequence[str], acts: Sequence[float], scale: float, center: int | None = None,
            simulated: Sequence[float] | None = None) -> Markup:
    """One example window. Pages hold thousands of tokens, so the markup is terse: inactive
    tokens stay bare text, active ones (and the token that selected the example) are
    `<i style=--a:ALPHA title=VALUE>` with unquoted attributes where that is valid HTML."""
    scale = scale if scale > 0 else 1.0
    parts = []
    for i, (tok, act) in enumerate(zip(tokens, acts)):
        text = html(tok)
        sim = simulated[i] if simulated is not None and i < len(simulated) else None
        if act <= 0 and i != center and not sim:
            parts.append(text)
            continue
        title = f"{act:.3g}" if sim is None else f'"{act:.3g} (sim {sim:.2g})"'
        cls = "class=c " if i == center else ""
        parts.append(f"<i {cls}style=--a:{_short(act / scale)} title={title}>{text}</i>")
    return Markup("".join(parts))


def _short(alpha: float) -> str:
    """0.5 as ".5", 1 as "1": a few bytes per token, times thousands per page."""
    alpha = min(max(alpha, 0.0), 1.0)
    return f"{alpha:.2f}".rstrip("0").rstrip(".").lstrip("0") or "0"
