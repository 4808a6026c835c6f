"""``lucid tour``: every built system's demo, linked from one index.html."""

from __future__ import annotations

import html
import time
import traceback
from pathlib import Path

from lucidml.core.report import Report
from lucidml.core.runs import atomic_write_text, claim, environment, make_run_dir, write_json
from lucidml.systems import SYSTEMS, get


def core_demo(out_dir: Path, quick: bool = False, device: str | None = None) -> Path:
    """The embedded defaults at work: digits-clip zero-shot, MiniLM, SmolLM2."""
    import matplotlib.pyplot as plt
    import numpy as np
    import torch

    from lucidml.core import zoo
    from lucidml.core.config import resolve_device
    from lucidml.core.metrics import accuracy, ece

    device = resolve_device(device)
    rep = Report("Embedded defaults")
    data = zoo.load_digits()
    vlm = zoo.load_vlm("digits-clip", device=device)
    logits = vlm.zero_shot(data.test_x, data.class_names)
    probs = logits.softmax(1).cpu()
    acc, cal = accuracy(probs, data.test_y), ece(probs, data.test_y)
    rep.heading("digits-clip zero-shot on the digits test split")
    rep.table([{"images": len(data.test_y), "accuracy": acc, "ECE (15 bins)": cal}])
    conf = np.zeros((10, 10), dtype=int)
    np.add.at(conf, (data.test_y.numpy(), probs.argmax(1).numpy()), 1)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(conf, cmap="Blues")
    ax.set(xlabel="predicted", ylabel="true", xticks=range(10), yticks=range(10))
    for (i, j), v in np.ndenumerate(conf):
        if v:
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7)
    rep.figure(fig, "digits_clip_confusion", "Zero-shot confusion matrix of digits-clip.")

    results = {"digits_clip": {"accuracy": acc, "ece": cal}}
    # digits-diffusion trains on first use (minutes); a quick tour shows it only if cached
    if not quick or zoo.available()[zoo.DIFFUSION_DEFAULT]["where"] != "trained on first use":
        from lucidml.core.digits_clip import CLASS_NAMES

        pipe = zoo.load_diffusion(device=device)
        labels = torch.arange(40) % 10
        images = pipe(
            [f"a handwritten {CLASS_NAMES[i]}." for i in labels],
            num_inference_steps=25,
            generator=torch.Generator().manual_seed(0),
        )
        gen_acc = accuracy(vlm.zero_shot(images, CLASS_NAMES).cpu(), labels)
        fig, axes = plt.subplots(4, 10, figsize=(8, 3.4))
        for img, ax in zip(images, axes.flat, strict=True):
            ax.imshow(img[0], cmap="gray", vmin=0, vmax=1)
            ax.axis("off")
        rep.heading("digits-diffusion samples")
        rep.figure(
            fig,
            "digits_diffusion_samples",
            f"Column c asks for 'a handwritten <c>'; digits-clip reads {gen_acc:.0%} "
            "of the 40 samples as the asked digit.",
        )
        results["digits_diffusion"] = {"digits_clip_accuracy_on_samples": gen_acc}
    if zoo.available()[zoo.ENCODER_DEFAULT]["installed"]:
        enc = zoo.load_sentence_encoder(device=device)
        sents = ["The cat sits on the mat.", "A kitten rests on a rug.", "Stocks fell sharply."]
        emb = enc.encode(sents, convert_to_tensor=True, normalize_embeddings=True)
        sim = (emb @ emb.T).tolist()
        rep.heading("minilm-l6 sentence similarity")
        rep.table(
            [
                {"sentence": s, **{f"cos #{j + 1}": sim[i][j] for j in range(3)}}
                for i, s in enumerate(sents)
            ]
        )
        results["minilm"] = {"cos_paraphrase": sim[0][1], "cos_unrelated": sim[0][2]}
    if zoo.available()[zoo.LLM_DEFAULT]["installed"]:
        model, tok = zoo.load_llm(device=device)
        rows = []
        for q in ["What is the capital of France?", "How many legs does a spider have?"]:
            ids = tok(f"Q: {q}\nA:", return_tensors="pt").to(device)
            with torch.no_grad():
                gen = model.generate(
                    **ids, max_new_tokens=16, do_sample=False, pad_token_id=tok.pad_token_id
                )
            answer = tok.decode(gen[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
            rows.append({"question": q, "greedy answer": answer.strip().splitlines()[0]})
        rep.heading("smollm2-135m-instruct greedy answers")
        rep.table(rows)
        results["smollm2"] = rows
    write_json(out_dir / "results.json", {**results, "env": environment(device)})
    return rep.save(out_dir)


def _index_page(entries: list[dict], quick: bool, total: float) -> str:
    rows = "\n".join(
        f"<tr><td>{html.escape(e['name'])}</td><td>{html.escape(e['title'])}</td>"
        f"<td>{html.escape(e['status'])}</td><td>{e['seconds']}</td><td>"
        + (f"<a href='{html.escape(e['href'])}'>report</a>" if e["href"] else "")
        + "</td></tr>"
        for e in entries
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>lucidml tour</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto}"
        "td,th{border:1px solid #ccc;padding:.3rem .6rem}table{border-collapse:collapse}"
        "</style></head><body><h1>lucidml tour</h1>"
        f"<p>{'quick' if quick else 'full'} settings, {time.strftime('%Y-%m-%d %H:%M')}, "
        f"{total:.0f} s so far</p>"
        "<table><tr><th>system</th><th>what</th><th>status</th><th>seconds</th><th></th></tr>"
        f"{rows}</table></body></html>"
    )


def run_tour(
    out: Path | None = None,
    quick: bool = False,
    only: str | None = None,
    device: str | None = None,
    echo=None,
    overwrite: bool = False,
):
    """Run the demos; return (index.html path, names of demos that failed).

    ``index.html`` and ``tour.json`` are written before the first demo and rewritten
    after each one, so a long or killed tour still shows what ran; ``echo`` (if given)
    gets one line per demo with its time, and a last line with the total.
    """
    from lucidml.core.config import resolve_device

    names = [n.strip() for n in only.split(",") if n.strip()] if only else None
    selected = [get(n) for n in names if n != "core"] if names else [s for s in SYSTEMS if s.built]
    unbuilt = [s.name for s in selected if not s.built]
    if unbuilt:
        from lucidml.errors import InputError

        raise InputError(f"not built yet, so no demo: {', '.join(unbuilt)}")
    device = resolve_device(device)
    echo = echo or (lambda line: None)
    root = claim("tour", out, overwrite=overwrite, resumable=False)
    jobs = [("core", "Embedded defaults", core_demo)] if not names or "core" in names else []
    jobs += [(s.name, s.title, s.demo) for s in selected]
    entries = [
        {"name": name, "title": title, "status": "pending", "href": None, "seconds": 0}
        for name, title, _ in jobs
    ]
    entries += [
        {"name": s.name, "title": s.title, "status": "not built yet", "href": None, "seconds": 0}
        for s in SYSTEMS
        if not s.built
    ]
    tour_start, failed = time.time(), []

    def publish() -> Path:
        total = round(time.time() - tour_start, 1)
        write_json(
            root / "tour.json",
            {"quick": quick, "device": device, "total_seconds": total, "demos": entries},
        )
        return atomic_write_text(root / "index.html", _index_page(entries, quick, total))

    index = publish()
    for entry, (name, _, fn) in zip(entries, jobs, strict=False):
        entry["status"] = "running"
        publish()
        start = time.time()
        try:
            report = fn(make_run_dir(name, root / name), quick=quick, device=device)
            entry["status"] = "ok"
            entry["href"] = str(Path(report).resolve().relative_to(root.resolve()))
        except Exception as exc:  # one failing demo must not hide the others
            failed.append(name)
            entry["status"] = f"failed: {type(exc).__name__}: {exc}"
            atomic_write_text(root / name / "error.txt", traceback.format_exc())
        entry["seconds"] = round(time.time() - start, 1)
        echo(f"{name:12s} {entry['status'].split(':')[0]:7s} {entry['seconds']:7.1f} s")
        index = publish()
    echo(f"{'total':12s} {'':7s} {time.time() - tour_start:7.1f} s")
    return index, failed
