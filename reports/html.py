"""The self-contained report page: inline CSS, tables as HTML, figures as base64 ``data:`` URIs."""
from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 24px auto; max-width: 1180px;
       color: #1d1d1f; line-height: 1.4; padding: 0 16px; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 1.6em; }
h3 { font-size: 1.05em; margin-bottom: 0.4em; }
p.warning { background: #fff4d6; border-left: 4px solid #d99a00; padding: 6px 10px; }
table { border-collapse: collapse; font-size: 13px; margin: 6px 0 4px; }
th, td { padding: 4px 9px; text-align: right; white-space: nowrap; }
thead th { border-bottom: 1px solid #444; text-align: center; } thead tr:first-child th { border-top: 2px solid #222; }
tbody tr:last-child th, tbody tr:last-child td { border-bottom: 2px solid #222; }
tbody th { text-align: left; font-weight: 500; }
tr.baseline { color: #555; font-style: italic; } tr.baseline:first-of-type, tr:not(.baseline) + tr.baseline th,
tr:not(.baseline) + tr.baseline td { border-top: 1px solid #999; }
.ci { color: #777; font-size: 11px; } p.note { color: #555; font-size: 12px; margin: 2px 0; }
figure { margin: 12px 0 20px; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 12px; } code, pre { font-size: 12px; background: #f5f5f7; }
pre { padding: 8px; overflow-x: auto; } details { margin: 6px 0; }
table.runs td, table.runs th { text-align: left; font-size: 12px; }
"""


def data_uri(path: Path) -> str:
    mime = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "svg": "image/svg+xml"}
    kind = mime.get(Path(path).suffix.lstrip(".").lower(), "application/octet-stream")
    return f"data:{kind};base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def figure(path: Path, caption: str, alt: Optional[str] = None) -> str:
    return (f'<figure><img src="{data_uri(path)}" alt="{html.escape(alt or caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def page(title: str, sections: Sequence[Tuple[str, str]], intro: str = "") -> str:
    """``sections``: (heading, HTML body) pairs; empty bodies are left out."""
    esc = html.escape
    parts: List[str] = [f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
                        f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<h1>{esc(title)}</h1>\n{intro}"]
    toc = [f'<li><a href="#s{i}">{esc(h)}</a></li>' for i, (h, body) in enumerate(sections) if body]
    parts.append("<nav><ul>" + "".join(toc) + "</ul></nav>")
    for i, (heading, body) in enumerate(sections):
        if body:
            parts.append(f'<section id="s{i}">\n<h2>{esc(heading)}</h2>\n{body}\n</section>')
    parts.append("</body>\n</html>\n")
    return "\n".join(parts)
