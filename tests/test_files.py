"""The one manifest reader behind datastores and draft heads: each fault is a one-line error that
names the file and says how to fix it in the reader's own words."""

from __future__ import annotations

import json

import pytest

from specbench_cli.datastores import manifest as datastore_manifest
from specbench_cli.files import read_versioned_json
from specbench_cli.head import model as head_model
from specbench_cli.types import SpecbenchError


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "holds no JSON object"),
        ('{"format_version": 7}', "has format version 7; this specbench reads version 3"),
        ('{"name": "x"}', "has format version None"),
    ],
)
def test_each_fault_names_the_file_and_the_remedy(tmp_path, text, needle):
    path = tmp_path / "manifest.json"
    path.write_text(text)
    with pytest.raises(SpecbenchError) as err:
        read_versioned_json(path, 3, "missing", "do the thing again")
    message = str(err.value)
    assert needle in message and str(path) in message and message.endswith("do the thing again")
    assert "\n" not in message
    with pytest.raises(SpecbenchError, match="^missing$"):
        read_versioned_json(tmp_path / "absent.json", 3, "missing", "do the thing again")
    path.write_text(json.dumps({"format_version": 3, "name": "x"}))
    assert read_versioned_json(path, 3, "missing", "unused") == {"format_version": 3, "name": "x"}


def test_datastore_and_head_readers_keep_their_own_remedies(tmp_path):
    store, head = tmp_path / "store", tmp_path / "head"
    store.mkdir()
    head.mkdir()
    with pytest.raises(SpecbenchError, match="is not a datastore.*build-index"):
        datastore_manifest.read_manifest(store)
    (store / "manifest.json").write_text(json.dumps({"format_version": datastore_manifest.FORMAT_VERSION}))
    with pytest.raises(SpecbenchError, match="no 'method' field"):
        datastore_manifest.read_manifest(store)
    (head / "manifest.json").write_text(json.dumps({"format_version": head_model.FORMAT_VERSION}))
    with pytest.raises(SpecbenchError, match="is not a draft head"):  # the weights file is missing
        head_model.read_manifest(head)
    (head / head_model.WEIGHTS_FILE).write_bytes(b"")
    assert head_model.read_manifest(head) == {"format_version": head_model.FORMAT_VERSION}
    (head / "manifest.json").write_text("{")
    with pytest.raises(SpecbenchError, match="not valid JSON.*train the head again"):
        head_model.read_manifest(head)
