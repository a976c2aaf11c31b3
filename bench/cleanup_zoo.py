"""Graph clean-up on a zoo of real architectures: edgeopt's ``cleanup`` vs onnxsim vs onnxslim.

Every model of ``bench/zoo_models.py`` (torchvision and timm, random weights) is exported with
both torch exporters, then cleaned by each tool in its own process (with a timeout). Per model:
top-level node count (and subgraph nodes), wall time (load + tool + save) and correctness in
ONNX Runtime (CPU, graph optimizations off, same random input; a result is ``broken`` when an
output differs by more than 1e-4 x max(1, max|reference|) or does not load). Where edgeopt ends
with more nodes than the better of onnxsim/onnxslim, ``diagnostic`` holds the op-type histogram
difference (edgeopt minus that tool).

    pip install -e ".[bench]"
    python bench/cleanup_zoo.py                        # full sweep -> bench/results/cleanup_zoo.{json,md}
    python bench/cleanup_zoo.py --models resnet18,swin_t --exporters torchscript --out /tmp/z.json
    python bench/cleanup_zoo.py --only-edgeopt         # re-run edgeopt only, onnxsim/onnxslim from the cache

Exports, tool outputs and per-tool results are cached in ``--cache`` (default /tmp/edgeopt_zoo).
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
from zoo_models import EXPORTERS, ZOO, ZooModel  # noqa: E402

TOOLS = ("edgeopt", "onnxsim", "onnxslim")
OTHERS = ("onnxsim", "onnxslim")
RTOL = 1e-4
HERE = Path(__file__).resolve().parent


def run_tool(tool: str, src: str, dst: str) -> float:
    """Clean ``src`` into ``dst`` with ``tool``; return the seconds taken (the worker's job)."""
    start = time.perf_counter()
    if tool == "edgeopt":  # what `edgeopt optimize SRC -o DST --passes cleanup` runs
        from edgeopt.workflow.optimize import optimize_file

        optimize_file(src, dst, ["cleanup"])
    elif tool == "onnxsim":
        import onnxsim

        model, _ = onnxsim.simplify(onnx.load(src))
        onnx.save(model, dst)
    elif tool == "onnxslim":
        import onnxslim

        onnxslim.slim(src, dst)
    else:
        raise ValueError(f"unknown tool {tool!r}")
    return time.perf_counter() - start


def _subprocess(cmd: list[str], timeout: float) -> tuple[str | None, str]:
    """Run ``cmd``; (None, stdout) on success, else (error summary, stdout)."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"timeout after {timeout:.0f} s", ""
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return f"exit {done.returncode}: " + " | ".join(tail)[-400:], done.stdout
    return None, done.stdout


def export_cached(spec: ZooModel, exporter: str, cache: Path, timeout: float) -> tuple[Path | None, str | None]:
    """The exported file (exported now unless cached) or the reason it failed (also cached)."""
    path = cache / f"{spec.name}-{exporter}.onnx"
    failed = path.with_suffix(".failed.txt")
    if path.exists():
        return path, None
    if failed.exists():
        return None, failed.read_text()
    error, _ = _subprocess([sys.executable, str(HERE / "zoo_models.py"), spec.name, exporter, str(path)], timeout)
    if error is None and path.exists():
        return path, None
    failed.write_text(error or "no file written")
    path.unlink(missing_ok=True)
    return None, failed.read_text()


def graph_stats(model: onnx.ModelProto) -> tuple[int, int, collections.Counter[str]]:
    """(top-level nodes, nodes inside subgraphs and functions, top-level op-type histogram)."""
    def count(graph: onnx.GraphProto) -> int:
        total = 0
        for node in graph.node:
            for attr in node.attribute:
                for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                    total += len(sub.node) + count(sub)
        return total

    sub = count(model.graph) + sum(len(f.node) for f in model.functions)
    return len(model.graph.node), sub, collections.Counter(n.op_type for n in model.graph.node)


def ort_run(path: Path, feeds: dict[str, np.ndarray] | None = None) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
    """(feeds, outputs) from ONNX Runtime CPU with graph optimizations off; random feeds if none."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    if feeds is None:
        rng = np.random.default_rng(0)
        feeds = {i.name: rng.standard_normal([d if isinstance(d, int) else 1 for d in i.shape]).astype(np.float32)
                 for i in sess.get_inputs()}
    return feeds, sess.run(None, feeds)


def compare(ref: list[np.ndarray], got: list[np.ndarray]) -> tuple[bool, float]:
    """(within tolerance, worst max|diff| / max(1, max|ref|)) over the outputs."""
    if len(ref) != len(got) or any(r.shape != g.shape for r, g in zip(ref, got, strict=True)):
        return False, float("inf")
    worst = 0.0
    for r, g in zip(ref, got, strict=True):
        diff = np.abs(r.astype(np.float64) - g.astype(np.float64))
        scale = max(1.0, float(np.abs(r).max(initial=0.0)))
        worst = max(worst, float(np.nan_to_num(diff, nan=np.inf).max(initial=0.0)) / scale)
    return worst <= RTOL, worst


def evaluate(tool: str, src: Path, ref: tuple[dict[str, np.ndarray], list[np.ndarray]] | None,
             cache: Path, timeout: float) -> dict[str, Any]:
    """One tool on one model: status (ok / broken / crashed), nodes, ops, seconds, error."""
    dst = src.with_name(f"{src.stem}.{tool}.onnx")
    dst.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", tool, str(src), str(dst)]
    error, stdout = _subprocess(cmd, timeout)
    if error is not None or not dst.exists():
        return {"status": "crashed", "error": error or "no file written"}
    seconds = json.loads(stdout.strip().splitlines()[-1])["seconds"]
    nodes, sub, ops = graph_stats(onnx.load(str(dst), load_external_data=False))
    result: dict[str, Any] = {"status": "ok", "nodes": nodes, "subgraph_nodes": sub, "ops": dict(ops),
                              "seconds": round(seconds, 2), "rel_err": None}
    if ref is not None:
        try:
            ok, err = compare(ref[1], ort_run(dst, ref[0])[1])
            result.update(status="ok" if ok else "broken", rel_err=err)
        except Exception as e:  # noqa: BLE001 - a result ORT rejects is broken
            result.update(status="broken", error=f"ORT: {type(e).__name__}: {str(e)[:300]}")
    return result


def bench_model(spec: ZooModel, exporter: str, src: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Original stats and every tool's result (onnxsim/onnxslim from the cache with --only-edgeopt)."""
    nodes, sub, ops = graph_stats(onnx.load(str(src), load_external_data=False))
    row: dict[str, Any] = {"model": spec.name, "source": spec.source, "exporter": exporter,
                           "input": [1, 3, spec.size, spec.size],
                           "original": {"nodes": nodes, "subgraph_nodes": sub, "ops": dict(ops)}}
    try:
        ref = ort_run(src)
    except Exception as e:  # noqa: BLE001 - recorded, correctness then unchecked
        ref, row["original"]["error"] = None, f"ORT: {type(e).__name__}: {str(e)[:300]}"
    for tool in TOOLS:
        cached = src.with_name(f"{src.stem}.{tool}.json")
        if args.only_edgeopt and tool != "edgeopt" and cached.exists():
            row[tool] = json.loads(cached.read_text())
            continue
        row[tool] = evaluate(tool, src, ref, args.cache, args.timeout)
        cached.write_text(json.dumps(row[tool]))
    diagnose(row)
    return row


def diagnose(row: dict[str, Any]) -> None:
    """Add ``best_other``, ``delta`` (edgeopt minus it) and, on a loss, the op-type difference."""
    others = [t for t in OTHERS if row[t]["status"] == "ok"]
    if not others:
        row["best_other"] = row["delta"] = None
        return
    best = min(others, key=lambda t: row[t]["nodes"])
    row["best_other"] = best
    mine = row["edgeopt"]
    row["delta"] = mine["nodes"] - row[best]["nodes"] if "nodes" in mine else None
    if row["delta"] is not None and (row["delta"] > 0 or mine["status"] != "ok"):
        diff = collections.Counter(mine["ops"])
        diff.subtract(row[best]["ops"])
        row["diagnostic"] = {op: n for op, n in sorted(diff.items(), key=lambda kv: -abs(kv[1])) if n}


def summary(rows: list[dict[str, Any]]) -> str:
    compared = [r for r in rows if r.get("best_other")]
    wins = sum(1 for r in compared if r["delta"] is not None and r["delta"] <= 0 and r["edgeopt"]["status"] == "ok")
    broken = {t: sum(1 for r in rows if r[t]["status"] != "ok") for t in TOOLS}
    return (f"edgeopt <= best of onnxsim/onnxslim on {wins} of {len(compared)}; broken: edgeopt {broken['edgeopt']}, "
            f"onnxsim {broken['onnxsim']}, onnxslim {broken['onnxslim']}")


def _cell(result: dict[str, Any]) -> str:
    flag = {"ok": "", "broken": " BROKEN", "crashed": " CRASHED"}[result["status"]]
    return f"{result.get('nodes', '-')}{flag}"


def markdown(rows: list[dict[str, Any]], failures: list[dict[str, str]]) -> str:
    head = ["model", "exporter", "original", *TOOLS, "edgeopt - best", "seconds e/sim/slim"]
    lines = ["# Clean-up on the zoo: node counts after each tool", "", summary(rows), "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        secs = "/".join(str(r[t].get("seconds", "-")) for t in TOOLS)
        cells = [r["model"], r["exporter"], str(r["original"]["nodes"]), *(_cell(r[t]) for t in TOOLS),
                 "-" if r.get("delta") is None else f"{r['delta']:+d}", secs]
        lines.append("| " + " | ".join(cells) + " |")
    losses = [r for r in rows if r.get("diagnostic")]
    if losses:
        lines += ["", "## Where edgeopt keeps more nodes (op-type counts, edgeopt minus the better tool)", ""]
        lines += [f"- {r['model']} ({r['exporter']}, {r['delta']:+d} vs {r['best_other']}): "
                  + ", ".join(f"{op} {n:+d}" for op, n in r["diagnostic"].items()) for r in losses]
    if failures:
        lines += ["", "## Exports that failed", ""]
        lines += [f"- {f['model']} ({f['exporter']}): {f['error']}" for f in failures]
    errors = [(r, t) for r in rows for t in TOOLS if r[t].get("error")]
    if errors:
        lines += ["", "## Tool errors", ""]
        lines += [f"- {r['model']} ({r['exporter']}) {t}: {r[t]['error']}" for r, t in errors]
    return "\n".join(lines) + "\n"


def write(rows: list[dict[str, Any]], failures: list[dict[str, str]], out: Path, seconds: float,
          only_edgeopt: bool) -> None:
    import onnxsim
    import onnxslim

    out.parent.mkdir(parents=True, exist_ok=True)
    git = ["git", "-C", str(HERE), "log", "-1", "--format=%h"]
    commit = subprocess.run(git, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(HERE), "status", "--porcelain", "edgeopt", "passes"],
                           capture_output=True, text=True).stdout.strip()
    versions = {"edgeopt": commit + (" + uncommitted edits" if dirty else ""), "onnxsim": onnxsim.__version__,
                "onnxslim": onnxslim.__version__, "onnxruntime": ort.__version__}
    out.write_text(json.dumps({"summary": summary(rows), "versions": versions, "sweep_seconds": round(seconds),
                               "onnxsim_onnxslim_from_cache": only_edgeopt,
                               "rtol": RTOL, "models": rows, "export_failures": failures}, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(rows, failures))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", help="comma-separated zoo names (default: all)")
    p.add_argument("--exporters", default=",".join(EXPORTERS))
    p.add_argument("--cache", type=Path, default=Path("/tmp/edgeopt_zoo"))
    p.add_argument("--out", type=Path, default=HERE / "results" / "cleanup_zoo.json")
    p.add_argument("--limit", type=int, help="only the first N models")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per export and per tool run")
    p.add_argument("--only-edgeopt", action="store_true", help="reuse cached onnxsim/onnxslim results")
    p.add_argument("--worker", nargs=3, metavar=("TOOL", "SRC", "DST"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps({"seconds": run_tool(*args.worker)}))
        return
    names = args.models.split(",") if args.models else list(ZOO)
    unknown = [n for n in names if n not in ZOO]
    if unknown:
        p.error(f"unknown model(s) {unknown}; the zoo: {', '.join(ZOO)}")
    args.cache.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    failures: list[dict[str, str]] = []
    start = time.perf_counter()
    for name in names[: args.limit]:
        for exporter in args.exporters.split(","):
            src, error = export_cached(ZOO[name], exporter, args.cache, args.timeout)
            if src is None:
                failures.append({"model": name, "exporter": exporter, "error": str(error)})
                print(f"{name:28s} {exporter:11s} export failed: {error}", flush=True)
                continue
            row = bench_model(ZOO[name], exporter, src, args)
            rows.append(row)
            print(f"{name:28s} {exporter:11s} {row['original']['nodes']:5d} -> "
                  + "  ".join(f"{t} {_cell(row[t])}" for t in TOOLS)
                  + (f"  delta {row['delta']:+d}" if row.get("delta") is not None else ""), flush=True)
            write(rows, failures, args.out, time.perf_counter() - start, args.only_edgeopt)
    write(rows, failures, args.out, time.perf_counter() - start, args.only_edgeopt)
    print(markdown(rows, failures))


if __name__ == "__main__":
    main()
