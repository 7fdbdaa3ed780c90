# Data package: the CRD manifests in this folder are the single source of truth for the API.
# This file only lets the installed package ship them (`kubeplex crds`, `kubeplex validate`);
# `kubectl apply -f crds/` and Helm read the .yaml files and ignore it.
