"""Reports: ``report.md`` and a self-contained ``report.html`` built from sections.

Figures are matplotlib figures rendered to PNG with the Agg backend; the HTML embeds
them as base64 so a report can be mailed or attached as one file.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lucidml.core.runs import atomic_write_bytes, atomic_write_text  # noqa: E402

_CSS = """
body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
table{border-collapse:collapse;margin:1rem 0}th,td{border:1px solid #ccc;padding:.3rem .6rem;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%}
code,pre{background:#f6f6f6;padding:.1rem .3rem}.note{color:#555}
"""


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


@dataclass
class _Block:
    kind: str  # "heading" | "text" | "table" | "figure" | "link"
    payload: Any


@dataclass
class Report:
    """Collects headings, paragraphs, tables and figures, then writes md + html."""

    title: str
    blocks: list[_Block] = field(default_factory=list)
    _figures: dict[str, bytes] = field(default_factory=dict)

    def heading(self, text: str) -> Report:
        self.blocks.append(_Block("heading", text))
        return self

    def text(self, text: str) -> Report:
        self.blocks.append(_Block("text", text))
        return self

    def table(self, rows: list[dict[str, Any]], columns: list[str] | None = None) -> Report:
        """A table from a list of dicts (or a pandas DataFrame)."""
        if hasattr(rows, "to_dict"):
            rows = rows.to_dict(orient="records")
        columns = columns or (list(rows[0]) if rows else [])
        self.blocks.append(_Block("table", (columns, rows)))
        return self

    def figure(self, fig, name: str, caption: str = "") -> Report:
        """Add a matplotlib figure; it is saved as ``<name>.png`` beside the report."""
        import io

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        self._figures[f"{name}.png"] = buf.getvalue()
        self.blocks.append(_Block("figure", (f"{name}.png", caption)))
        return self

    def link(self, text: str, href: str) -> Report:
        self.blocks.append(_Block("link", (text, href)))
        return self

    def to_markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for b in self.blocks:
            if b.kind == "heading":
                out += [f"## {b.payload}", ""]
            elif b.kind == "text":
                out += [b.payload, ""]
            elif b.kind == "table":
                cols, rows = b.payload
                out.append("| " + " | ".join(cols) + " |")
                out.append("|" + "---|" * len(cols))
                out += ["| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
                out.append("")
            elif b.kind == "figure":
                name, caption = b.payload
                out += [f"![{caption or name}]({name})", ""]
                if caption:
                    out += [f"*{caption}*", ""]
            elif b.kind == "link":
                out += [f"- [{b.payload[0]}]({b.payload[1]})"]
        return "\n".join(out) + "\n"

    def to_html(self) -> str:
        esc = html.escape
        out = [
            "<!doctype html><html><head><meta charset='utf-8'>",
            f"<title>{esc(self.title)}</title><style>{_CSS}</style></head><body>",
            f"<h1>{esc(self.title)}</h1>",
        ]
        for b in self.blocks:
            if b.kind == "heading":
                out.append(f"<h2>{esc(b.payload)}</h2>")
            elif b.kind == "text":
                out.append(f"<p>{esc(b.payload)}</p>")
            elif b.kind == "table":
                cols, rows = b.payload
                out.append("<table><tr>" + "".join(f"<th>{esc(c)}</th>" for c in cols) + "</tr>")
                for r in rows:
                    cells = "".join(f"<td>{esc(_fmt(r.get(c, '')))}</td>" for c in cols)
                    out.append(f"<tr>{cells}</tr>")
                out.append("</table>")
            elif b.kind == "figure":
                name, caption = b.payload
                data = base64.b64encode(self._figures[name]).decode()
                out.append(f"<figure><img alt='{esc(name)}' src='data:image/png;base64,{data}'>")
                out.append(f"<figcaption class='note'>{esc(caption)}</figcaption></figure>")
            elif b.kind == "link":
                out.append(f"<p><a href='{esc(b.payload[1])}'>{esc(b.payload[0])}</a></p>")
        out.append("</body></html>")
        return "\n".join(out)

    def save(self, folder: str | Path) -> Path:
        """Write figures, ``report.md`` and ``report.html``; return the HTML path."""
        folder = Path(folder)
        for name, data in self._figures.items():
            atomic_write_bytes(folder / name, data)
        atomic_write_text(folder / "report.md", self.to_markdown())
        return atomic_write_text(folder / "report.html", self.to_html())
