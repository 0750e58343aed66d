"""The bar ``gerbil finetune`` classification has to clear: TF-IDF + logistic regression (scikit-learn).

    python benchmarks/finetune_baseline.py                    # SpamAssassin and BoolQ
    python benchmarks/finetune_baseline.py --max-tokens 256   # what a 256-token context would see
    python benchmarks/finetune_baseline.py --file my.jsonl --text-field body --label-field y

Each set is read with ``gerbil.finetune.data.read_examples`` and split with ``split_validation``
(fraction 0.1, seed 0) — the very split a fine-tuning run gets — then fitted on train and scored on
validation. Rows per set:

* ``majority``: always the most frequent training class (the floor);
* ``word 1-2``: TF-IDF of word uni+bigrams (min_df 2, sublinear tf);
* ``char 2-5``: TF-IDF of character 2-5-grams within word boundaries (min_df 2, sublinear tf);
* ``word+char``: both feature sets side by side;

each once on the full text and once on the text cut to its first ``--max-tokens`` GPT-2 tokens (default
512), what a tiny model with that context sees. Logistic regression is scikit-learn's default (L2,
C=1, lbfgs), untuned: tuning on the validation set would make its score optimistic. Times are wall
seconds on this machine: fit = vectorizer + classifier fit on train, predict = transform + predict on
validation. Needs scikit-learn (not a gerbil dependency).
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any


def _vectorizer(kind: str) -> Any:
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion

    word = lambda: TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, dtype=np.float32)
    char = lambda: TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=2, sublinear_tf=True,
                                   dtype=np.float32)
    if kind == "word 1-2":
        return word()
    if kind == "char 2-5":
        return char()
    return FeatureUnion([("word", word()), ("char", char())])


def _score(y_true: list[int], y_pred: list[int]) -> tuple[float, float]:
    from sklearn.metrics import accuracy_score, f1_score

    return accuracy_score(y_true, y_pred), f1_score(y_true, y_pred, average="macro")


def _run(name: str, train_x: list[str], train_y: list[int], val_x: list[str], val_y: list[int],
         view: str) -> list[dict[str, Any]]:
    from sklearn.linear_model import LogisticRegression

    rows = []
    t0 = time.perf_counter()
    top = statistics.mode(train_y)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    pred = [top] * len(val_y)
    acc, f1 = _score(val_y, pred)
    rows.append({"set": name, "text": view, "model": "majority", "acc": acc, "f1": f1, "fit": fit_s,
                 "predict": time.perf_counter() - t0})
    for kind in ("word 1-2", "char 2-5", "word+char"):
        t0 = time.perf_counter()
        vec = _vectorizer(kind)
        xtr = vec.fit_transform(train_x)
        clf = LogisticRegression(max_iter=2000)
        clf.fit(xtr, train_y)
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        pred = clf.predict(vec.transform(val_x)).tolist()
        pred_s = time.perf_counter() - t0
        acc, f1 = _score(val_y, pred)
        rows.append({"set": name, "text": view, "model": f"tfidf {kind} + LR", "acc": acc, "f1": f1,
                     "fit": fit_s, "predict": pred_s, "features": xtr.shape[1]})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", nargs="*", default=["spam_assassin", "boolq"], choices=["spam_assassin", "boolq"])
    ap.add_argument("--file", action="append", default=[], help="another classify file (jsonl/csv/parquet)")
    ap.add_argument("--text-field", default="text")
    ap.add_argument("--label-field", default="label")
    ap.add_argument("--max-tokens", type=int, default=512,
                    help="also score the text cut to its first N GPT-2 tokens (0: full text only)")
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from gerbil.finetune import datasets
    from gerbil.finetune.data import read_examples, split_validation

    sources: list[tuple[str, Callable[[], Any]]] = [(s, getattr(datasets, s)) for s in args.sets]
    sources += [(f, (lambda f=f: f)) for f in args.file]
    tok = None
    if args.max_tokens:
        from gerbil.data.tokenizer import Tokenizer

        tok = Tokenizer.load()

    results: list[dict[str, Any]] = []
    for name, get_path in sources:
        ex = read_examples(get_path(), "classify", text_field=args.text_field if name in args.file else "text",
                           label_field=args.label_field if name in args.file else "label")
        train, val = split_validation(ex, args.fraction, args.seed)
        counts = ", ".join(f"{k} {v}" for k, v in ex.label_counts().items())
        line = (f"{name}: {len(ex)} examples ({counts}); train {len(train)}, val {len(val)} "
                f"({', '.join(f'{k} {v}' for k, v in val.label_counts().items())}); {ex.bad.summary()}")
        views = [("full", train.texts, val.texts)]
        if tok is not None:
            ids_tr, ids_va = tok.encode_batch(train.texts), tok.encode_batch(val.texts)
            lens = sorted(len(x) for x in ids_tr + ids_va)
            line += (f"; GPT-2 tokens per example: median {lens[len(lens) // 2]}, p90 "
                     f"{lens[int(len(lens) * 0.9)]}, max {lens[-1]}; "
                     f"{sum(n > args.max_tokens for n in lens) / len(lens):.0%} longer than {args.max_tokens}")
            cut = lambda ids: [tok.decode(x[:args.max_tokens]) for x in ids]
            views.append((f"first {args.max_tokens} tok", cut(ids_tr), cut(ids_va)))
        print(line, flush=True)
        for view, xtr, xva in views:
            for r in _run(name, xtr, train.labels, xva, val.labels, view):
                results.append({**r, "sizes": f"{len(train)} / {len(val)}"})

    print()
    print("| set | text | model | val acc | val macro-F1 | fit s | predict s | features | train / val |")
    print("|---|---|---|---:|---:|---:|---:|---:|---|")
    for r in results:
        feats = f"{r['features']:,}" if "features" in r else ""
        print(f"| {r['set']} | {r['text']} | {r['model']} | {r['acc']:.4f} | {r['f1']:.4f} | "
              f"{r['fit']:.2f} | {r['predict']:.2f} | {feats} | {r['sizes']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
