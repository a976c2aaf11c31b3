"""Tables for ``bench/int8_peers.py``: one log line per row and the Markdown report."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

LABELS = {"edgeopt": "edgeopt (defaults)", "ort": "ORT quantize_static", "ort-reduce-range": "ORT reduce_range",
          "nncf-performance": "NNCF performance", "nncf-mixed": "NNCF mixed", "aimet-adaround": "AIMET AdaRound"}
METRIC = {"classifier": ("top1_agreement", "top-1 agreement"), "embedding": ("cosine", "cosine"),
          "ocr": ("cer", "CER %")}


def _metric(scores: dict[str, float], kind: str) -> str:
    key = METRIC[kind][0]
    return f"{100 * scores[key]:.2f}" if key == "cer" else f"{scores[key]:.4f}"


def one_line(row: dict[str, Any], kind: str) -> str:
    if "failed" in row:
        return f"FAILED: {row['failed']}"
    k, s = row["kernels"], row["simulation"]
    name = METRIC[kind][1]
    return (f"kernels {k['sqnr_db']:.1f} dB {name} {_metric(k, kind)} | sim {s['sqnr_db']:.1f} dB "
            f"{name} {_metric(s, kind)} | {row['size_bytes'] / 1e6:.2f} MB, {row['seconds']:.1f} s, "
            f"peak {row['peak_rss_mib']:.0f} MiB")


def _table(result: dict[str, Any]) -> list[str]:
    kind = result["kind"]
    name = METRIC[kind][1]
    lines = [f"| tool | kernels SQNR dB | kernels {name} | sim SQNR dB | sim {name} | size MB | quantize s "
             "| peak RSS MiB | p50 ms |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    notes, failures = [], []
    for tool, row in result["rows"].items():
        if tool == "fp32":
            task = f"{_metric(row['task'], kind)}" if "task" in row else ""
            lines.append(f"| fp32 | | {task} | | {task} | {row['size_bytes'] / 1e6:.2f} | | | "
                         f"{row['latency_ms']:.2f} |")
            continue
        label = LABELS.get(tool, tool)
        if "failed" in row:
            lines.append(f"| {label} | failed | | | | | | | |")
            failures.append(f"- {label}: {row['failed']}")
            continue
        k, s = row["kernels"], row["simulation"]
        lines.append(f"| {label} | {k['sqnr_db']:.1f} | {_metric(k, kind)} | {s['sqnr_db']:.1f} | "
                     f"{_metric(s, kind)} | {row['size_bytes'] / 1e6:.2f} | {row['seconds']:.1f} | "
                     f"{row['peak_rss_mib']:.0f} | {row['latency_ms']:.2f} |")
        samples = f" ({row['calibration_samples']} samples)" if "calibration_samples" in row else ""
        at = f" at {row['edgeopt_commit']}" if "edgeopt_commit" in row else ""
        notes.append(f"- {label}: {row['notes']}{samples}; input: {row.get('input', '?')}; "
                     f"measured {row.get('measured_at', '?')}{at}")
    return lines + ["", _verdict(result)] + notes + failures


def _verdict(result: dict[str, Any]) -> str:
    """One line: edgeopt's kernels metric beside the best peer's."""
    kind, rows = result["kind"], result["rows"]
    key, name = METRIC[kind]
    sign = -1 if key == "cer" else 1
    scored = {t: r["kernels"][key] for t, r in rows.items() if t != "fp32" and "kernels" in r}
    peers = {t: v for t, v in scored.items() if t != "edgeopt"}
    if "edgeopt" not in scored or not peers:
        return ""
    best = max(peers, key=lambda t: sign * peers[t])
    fmt = (lambda v: f"{100 * v:.2f} %") if key == "cer" else (lambda v: f"{v:.4f}")
    name = "CER" if key == "cer" else name
    ahead = sign * (scored["edgeopt"] - peers[best]) >= 0
    return (f"**edgeopt {fmt(scored['edgeopt'])} {name} on the kernels; best peer {LABELS.get(best, best)} "
            f"{fmt(peers[best])}: edgeopt {'ahead or tied' if ahead else 'behind'}.**\n")


def write_markdown(document: dict[str, Any], path: Path) -> None:
    host = document["host"]
    lines = ["# int8 peers: edgeopt vs ONNX Runtime, NNCF and AIMET", "",
             f"`{document['command']}` · updated {document['updated']} · edgeopt at {host['edgeopt_commit']} · "
             f"{host['cpu']} ({', '.join(host['int8_flags'])}), {host['cores']} cores · onnxruntime "
             f"{host['onnxruntime']}. {host['note']}.", "",
             "Kernels: a default ONNX Runtime session on this CPU. Sim: the QDQ graph with graph optimizations "
             "off (Q/DQ as float ops). SQNR and the metric are against fp32 on held-out data; for OCR the CER "
             "is against the known text (fp32's CER in the fp32 row). Quantize s: the tool's call in its own "
             "process; peak RSS: that process's high-water mark (imports included).", ""]
    for line in document.get("observations", []):
        lines.append(f"- {line}")
    lines.append("")
    for name, result in document["models"].items():
        if "rows" not in result:
            lines += [f"## {name}", "", f"skipped: {result.get('skipped', result)}", ""]
            continue
        lines += [f"## {result['title']}", "",
                  f"{result['calibration_samples']} calibration samples, {result['held_out']} held out.", ""]
        lines += _table(result) + [""]
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text("\n".join(lines))
    os.replace(tmp, path)
