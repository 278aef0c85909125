"""One drafting method per file; the registry in `specbench_cli.registry` names them."""
