"""``kubeplex crds`` and ``kubeplex validate``."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys

from kubeplex.cli import Commands


def register(cli: Commands) -> None:
    crds = cli.command("crds", "print the CRDs (or apply them with kubectl)", _crds)
    crds.add_argument("--apply", action="store_true",
                      help="pipe them to `kubectl apply --server-side -f -` instead of printing")
    crds.add_argument("--kubeconfig", help="kubeconfig for --apply (default: kubectl's)")

    validate = cli.command(
        "validate", "check ModelService / GPUPool YAML offline against the CRDs (schema and CEL)",
        _validate)
    validate.add_argument("files", nargs="+", metavar="FILE", help="YAML files or directories")
    validate.add_argument("--json", action="store_true", help="print one JSON result per document")


def _crds(args: argparse.Namespace) -> int:
    from kubeplex.api import crd_text

    text = crd_text()
    if not args.apply:
        sys.stdout.write(text)
        return 0
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        print("error: kubectl is not on PATH; install it, or pipe `kubeplex crds` to a "
              "kubectl elsewhere", file=sys.stderr)
        return 2
    command = [kubectl, "apply", "--server-side", "--field-manager=kubeplex", "-f", "-"]
    if args.kubeconfig:
        command[1:1] = ["--kubeconfig", args.kubeconfig]
    return subprocess.run(command, input=text, text=True, check=False).returncode


def _validate(args: argparse.Namespace) -> int:
    from kubeplex.api import check_documents, foreign_kinds

    results = check_documents(args.files)
    if not results:
        others = foreign_kinds(args.files)
        found = f" (found {', '.join(sorted(set(others))[:5])})" if others else ""
        print(f"error: no kubeplex.io documents in {' '.join(args.files)}{found}; validate "
              "checks ModelService, GPUPool and ServingGroup (apiVersion kubeplex.io/v1alpha1)",
              file=sys.stderr)
        return 2
    bad = 0
    for doc in results:
        bad += bool(doc.errors)
        if args.json:
            print(json.dumps({"file": doc.source, "index": doc.index, "kind": doc.kind,
                              "name": doc.name, "valid": not doc.errors,
                              "errors": [str(e) for e in doc.errors]}))
        elif doc.errors:
            print(f"INVALID {doc.where}")
            for error in doc.errors:
                print(f"  - {error}")
        else:
            print(f"ok      {doc.where}")
    if not args.json:
        print(f"{len(results) - bad} valid, {bad} invalid")
    return 1 if bad else 0
