"""What a client may see of server-side text: no server paths. A path under a known folder is shown
relative to it (``uploads/my-net/x.pt``), any other absolute path as its file name alone; the full
text stays in the server's own logs and state (tracebacks). Torch-free.

>>> redact("missing file /srv/data/uploads/a/x.pt", {"": Path("/srv/data")})
'missing file uploads/a/x.pt'
>>> redact("cannot open /usr/lib/x/libfoo.so.1: no such file; see https://example.org/a/b")
'cannot open libfoo.so.1: no such file; see https://example.org/a/b'
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, Optional

#: an absolute path inside text: a "/" not preceded by a word character, ".", ":", "/" or "~" (so URLs
#: and relative paths are left alone), then at least one more component; group 1 is the last component
ABSOLUTE = re.compile(r"(?<![\w.:/~-])/(?:[^\s/'\"`(),;:<>]+/)+([^\s/'\"`(),;:<>]*)")


def redact(text: Optional[str], roots: Optional[Mapping[str, Path]] = None) -> Optional[str]:
    """``text`` with every path under one of ``roots`` ({shown prefix: folder}) made relative to it
    (with the prefix), and every other absolute path cut to its file name."""
    if not isinstance(text, str):
        return text
    for prefix, root in sorted((roots or {}).items(), key=lambda kv: -len(str(kv[1]))):
        for form in {str(root), str(Path(root).resolve())}:
            if form not in ("", "/"):
                text = text.replace(form.rstrip("/") + "/", f"{prefix}/" if prefix else "")
    return ABSOLUTE.sub(lambda m: m.group(1) or "/", text)


def redact_all(value: Any, roots: Optional[Mapping[str, Path]] = None) -> Any:
    """:func:`redact` applied to every string inside a JSON-like value (dicts, lists)."""
    if isinstance(value, str):
        return redact(value, roots)
    if isinstance(value, dict):
        return {k: redact_all(v, roots) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_all(v, roots) for v in value]
    return value


def settings_roots(settings) -> dict[str, Path]:
    """The folders of ``settings`` (a :class:`precompute.settings.Settings`) as :func:`redact` roots:
    the data dir shows as nothing (``uploads/...``, ``cache/...``), the others by their name."""
    roots = {"": settings.data_dir, "uploads": settings.uploads, "cache": settings.cache, "store": settings.store,
             "datasets": settings.datasets, "reference": settings.reference_dir}
    if settings.zoo_dir:
        roots["zoo"] = settings.zoo_dir
    return {k: Path(v) for k, v in roots.items()}
