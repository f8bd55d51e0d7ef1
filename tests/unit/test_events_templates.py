"""The events index (template, retention) and its dashboards, checked statically and against engine doubles.

No Elasticsearch, OpenSearch, Kibana or OpenSearch Dashboards runs here, so:
- each engine's side of the retention policies is mirrored from its documented API: Elasticsearch's ILM
  (`GET _ilm/policy/<id>` -> `{"<id>": {"version", "policy"}}`, a `delete` action read back with its defaults) and
  OpenSearch's ISM (`GET` -> `_seq_no`/`_primary_term` beside the policy, an update refused without them, `retry` added
  to each action); OpenSearch, like osmem, refuses the unknown setting `index.lifecycle.name`;
- the saved objects are checked for what `POST /api/saved_objects/_import` needs (id, type, attributes, references
  that resolve inside the file, the migration versions) and for what their visualizations ask of the index: every
  field they aggregate on is in the index template's mappings with a type the aggregation takes.
"""

from __future__ import annotations

import fnmatch
import json
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from sidecar.tools.engine_client import EngineClient, EngineError
from sidecar.tools.templates import Template, apply, default_dir, load

ROOT = default_dir()
TEMPLATE = json.loads((ROOT / "index_templates" / "rerank-sidecar-events.json").read_text())
SAVED_OBJECTS = {
    "kibana": ROOT / "kibana" / "rerank-sidecar-events.ndjson",
    "opensearch_dashboards": ROOT / "opensearch_dashboards" / "rerank-sidecar-events.ndjson",
}
NUMERIC = {"byte", "short", "integer", "long", "float", "half_float", "double", "scaled_float", "unsigned_long"}
DOCUMENT = {  # the shape the sidecar writes (one reranked or shadowed search)
    "@timestamp": "date",
    "index": "keyword",
    "rule": "keyword",
    "kind": "keyword",
    "outcome": "keyword",
    "reason": "keyword",
    "window": "integer",
    "reranked": "integer",
    "added_ms": "float",
    "model": "keyword",
    "shadow.overlap_at_10": "float",
    "shadow.top_hit_rank": "integer",
    "shadow.kendall_tau": "float",
    "shadow.would_add_ms": "float",
    "query": "text",
}


def _fields(properties: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Leaf fields of a mapping as dotted names -> type."""
    out: dict[str, str] = {}
    for name, spec in properties.items():
        if "properties" in spec:
            out.update(_fields(spec["properties"], f"{prefix}{name}."))
        else:
            out[prefix + name] = spec["type"]
    return out


MAPPED = _fields(TEMPLATE["template"]["mappings"]["properties"])


def _objects(name: str) -> list[dict[str, Any]]:
    """The file's saved objects, line by line (a Kibana export's closing summary line is allowed and left out)."""
    text = SAVED_OBJECTS[name].read_text()
    assert text.endswith("\n") and "\n\n" not in text, "one object per line, no blank lines"
    lines = [json.loads(line) for line in text.splitlines()]
    assert all(isinstance(o, dict) for o in lines)
    if "exportedCount" in lines[-1]:
        lines.pop()
    return lines


def _by_type(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["type"] == kind]


def _data_view(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (view,) = _by_type(objects, "index-pattern")
    return view


def _needs(field: str, types: set[str], what: str) -> None:
    assert field in MAPPED, f"{what}: {field} is not in the events index template's mappings"
    assert MAPPED[field] in types, f"{what}: {field} is {MAPPED[field]}, needs one of {sorted(types)}"


# -- the index template --------------------------------------------------------------------------------------------


def test_the_events_template_maps_exactly_the_documents_fields_on_one_shard() -> None:
    assert TEMPLATE["index_patterns"] == ["rerank-sidecar-events-*"]
    assert fnmatch.fnmatch("rerank-sidecar-events-2026.12.01", TEMPLATE["index_patterns"][0])
    assert not fnmatch.fnmatch("passages-2026.12.01", TEMPLATE["index_patterns"][0])
    mappings = TEMPLATE["template"]["mappings"]
    assert mappings["dynamic"] is False  # an unknown field stays in _source, unindexed: a write never fails on it
    assert MAPPED == DOCUMENT
    settings = TEMPLATE["template"]["settings"]["index"]
    assert settings["number_of_shards"] == 1
    assert settings["lifecycle"] == {"name": "{{ilm_policy}}"}  # filled, or left out, by `templates apply`


def test_retention_is_seven_days_from_creation_in_both_engines_policies() -> None:
    ilm = json.loads((ROOT / "ilm_policies" / "rerank-sidecar-events.json").read_text())["policy"]
    assert ilm["phases"] == {"delete": {"min_age": "7d", "actions": {"delete": {}}}}  # no rollover: age = creation
    ism = json.loads((ROOT / "ism_policies" / "rerank-sidecar-events.json").read_text())["policy"]
    states = {s["name"]: s for s in ism["states"]}
    assert ism["default_state"] == "hot"
    assert states["hot"]["transitions"] == [{"state_name": "delete", "conditions": {"min_index_age": "7d"}}]
    assert states["delete"]["actions"] == [{"delete": {}}] and states["delete"]["transitions"] == []
    (attach,) = ism["ism_template"]
    assert attach["index_patterns"] == TEMPLATE["index_patterns"]


def test_policies_load_first_so_the_index_template_can_name_the_ilm_policy() -> None:
    paths = [t.path for t in load(ROOT)]
    assert paths[:2] == ["/_ilm/policy/rerank-sidecar-events", "/_plugins/_ism/policies/rerank-sidecar-events"]
    assert "/_index_template/rerank-sidecar-events" in paths


# -- templates apply against each engine's API, mirrored ----------------------------------------------------------


class _Engine(EngineClient):
    """Index templates plus the one lifecycle API the engine has: Elasticsearch's ILM or OpenSearch's ISM."""

    def __init__(self, flavour: str) -> None:
        super().__init__("http://fake.invalid")
        self.flavour = flavour
        self.templates: dict[str, Any] = {}
        self.policies: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, str]] = []

    def request(self, method: str, path: str, body: Any = None, *, ok: tuple[int, ...] = ()) -> Any:
        self.calls.append((method, path))
        url = urlsplit(path)
        name = url.path.rsplit("/", 1)[1]
        if url.path.startswith("/_index_template/"):
            return self._index_template(method, name, body, ok)
        if url.path.startswith("/_ilm/policy/") and self.flavour == "elasticsearch":
            return self._ilm(method, name, body, ok)
        if url.path.startswith("/_plugins/_ism/policies/") and self.flavour == "opensearch":
            return self._ism(method, name, body, parse_qs(url.query), ok)
        return self._fail(
            method, path, 400, {"error": f"no handler found for uri [{url.path}] and method [{method}]"}, ok
        )

    def _fail(self, method: str, path: str, status: int, reply: dict[str, Any], ok: tuple[int, ...]) -> Any:
        if status in ok:
            return reply
        raise EngineError(method, path, status, reply)

    def _index_template(self, method: str, name: str, body: Any, ok: tuple[int, ...]) -> Any:
        if method == "PUT":
            settings = json.dumps(body.get("template", {}).get("settings", {}))
            if self.flavour == "opensearch" and '"lifecycle"' in settings:
                reason = "unknown setting [index.lifecycle.name] please check that any required plugins are installed"
                return self._fail(method, name, 400, {"error": {"type": "settings_exception", "reason": reason}}, ok)
            self.templates[name] = body
            return {"acknowledged": True}
        if name not in self.templates:
            return self._fail(method, name, 404, {"error": {"type": "resource_not_found_exception"}, "status": 404}, ok)
        return {"index_templates": [{"name": name, "index_template": self.templates[name]}]}

    def _ilm(self, method: str, name: str, body: Any, ok: tuple[int, ...]) -> Any:
        if method == "PUT":
            stored = json.loads(json.dumps(body))
            for phase in stored["policy"]["phases"].values():  # the defaults Elasticsearch reads back
                if "delete" in phase["actions"]:
                    phase["actions"]["delete"].setdefault("delete_searchable_snapshot", True)
            version = self.policies.get(name, {}).get("version", 0) + 1
            self.policies[name] = {"version": version, "modified_date": "2026-12-01T00:00:00Z", **stored}
            return {"acknowledged": True}
        if name not in self.policies:
            return self._fail(method, name, 404, {"error": {"type": "resource_not_found_exception"}, "status": 404}, ok)
        return {name: {**self.policies[name], "in_use_by": {"indices": []}}}

    def _ism(self, method: str, name: str, body: Any, query: dict[str, list[str]], ok: tuple[int, ...]) -> Any:
        current = self.policies.get(name)
        if method == "PUT":
            guard = (query.get("if_seq_no", [None])[0], query.get("if_primary_term", [None])[0])
            if current is not None and guard != (str(current["_seq_no"]), str(current["_primary_term"])):
                conflict = {"error": {"type": "version_conflict_engine_exception"}, "status": 409}
                return self._fail(method, name, 409, conflict, ok)
            policy = json.loads(json.dumps(body["policy"]))
            for state in policy["states"]:
                for action in state["actions"]:
                    action.setdefault("retry", {"count": 3, "backoff": "exponential", "delay": "1m"})
            for attach in policy.get("ism_template", []):
                attach["last_updated_time"] = 1796169600000
            policy.update(policy_id=name, last_updated_time=1796169600000, schema_version=21, error_notification=None)
            seq_no = 0 if current is None else current["_seq_no"] + 1
            self.policies[name] = {"_id": name, "_version": seq_no + 1, "_seq_no": seq_no, "_primary_term": 1}
            self.policies[name]["policy"] = policy
            return dict(self.policies[name])
        if current is None:
            missing = {"error": {"type": "status_exception", "reason": "Policy not found"}, "status": 404}
            return self._fail(method, name, 404, missing, ok)
        return current


def _events_templates() -> list[Template]:
    return [t for t in load(ROOT) if t.name == "rerank-sidecar-events"]


def _outcomes(engine: _Engine, templates: list[Template]) -> dict[str, str]:
    return {t.path: outcome for t, outcome in apply(engine, templates)}


def test_elasticsearch_gets_the_ilm_policy_and_an_index_template_naming_it() -> None:
    engine = _Engine("elasticsearch")
    assert _outcomes(engine, _events_templates()) == {
        "/_ilm/policy/rerank-sidecar-events": "created",
        "/_plugins/_ism/policies/rerank-sidecar-events": "unsupported",
        "/_index_template/rerank-sidecar-events": "created",
    }
    settings = engine.templates["rerank-sidecar-events"]["template"]["settings"]["index"]
    assert settings == {"number_of_shards": 1, "lifecycle": {"name": "rerank-sidecar-events"}}
    assert set(_outcomes(engine, _events_templates()).values()) == {"unchanged", "unsupported"}  # read-back defaults


def test_opensearch_gets_the_ism_policy_and_an_index_template_without_the_ilm_setting() -> None:
    engine = _Engine("opensearch")
    assert _outcomes(engine, _events_templates()) == {
        "/_ilm/policy/rerank-sidecar-events": "unsupported",
        "/_plugins/_ism/policies/rerank-sidecar-events": "created",
        "/_index_template/rerank-sidecar-events": "created",
    }
    assert engine.templates["rerank-sidecar-events"]["template"]["settings"] == {"index": {"number_of_shards": 1}}
    assert engine.templates["rerank-sidecar-events"]["template"]["mappings"] == TEMPLATE["template"]["mappings"]
    assert set(_outcomes(engine, _events_templates()).values()) == {"unchanged", "unsupported"}  # retry, times

    (ism,) = [t for t in _events_templates() if t.kind == "ism_policies"]
    longer = json.loads(json.dumps(ism.body).replace('"7d"', '"14d"'))
    assert _outcomes(engine, [Template(ism.kind, ism.name, longer)]) == {ism.path: "updated"}
    assert ("PUT", ism.path + "?if_seq_no=0&if_primary_term=1") in engine.calls  # ISM's guard on an update
    assert engine.policies["rerank-sidecar-events"]["policy"]["states"][0]["transitions"][0]["conditions"] == {
        "min_index_age": "14d"
    }


# -- the saved objects: what the import API needs ------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SAVED_OBJECTS))
def test_each_line_is_a_saved_object_whose_references_resolve_in_the_file(name: str) -> None:
    objects = _objects(name)
    keys = [(o["type"], o["id"]) for o in objects]
    assert len(keys) == len(set(keys)), "ids are unique per type"
    for o in objects:
        assert isinstance(o["id"], str) and o["id"] and isinstance(o["attributes"], dict), o
        assert o["attributes"]["title"], o["id"]
        assert isinstance(o["references"], list)
        for ref in o["references"]:
            assert set(ref) == {"name", "type", "id"}, ref
            assert (ref["type"], ref["id"]) in keys, f"{o['id']}: {ref} is not in the file (a missing reference)"
        if name == "kibana":  # the import API's note: kept or written, these carry the object across versions
            assert o["coreMigrationVersion"] == "8.8.0" and re.fullmatch(r"\d+\.\d+\.\d+", o["typeMigrationVersion"])
        else:
            assert set(o["migrationVersion"]) == {o["type"]}, o["id"]
    assert {o["type"] for o in objects} >= {"index-pattern", "dashboard"}
    (dashboard,) = _by_type(objects, "dashboard")
    assert {ref["id"] for ref in dashboard["references"]} == {o["id"] for o in objects} - {
        dashboard["id"],
        _data_view(objects)["id"],
    }, "the dashboard shows every visualization in the file"


@pytest.mark.parametrize("name", sorted(SAVED_OBJECTS))
def test_the_data_view_is_the_events_pattern_on_timestamp(name: str) -> None:
    view = _data_view(_objects(name))["attributes"]
    assert view["title"] == TEMPLATE["index_patterns"][0] and view["timeFieldName"] == "@timestamp"
    _needs("@timestamp", {"date", "date_nanos"}, "timeFieldName")
    if name == "kibana":
        # Kibana reads fields from the indices each time; allowNoIndex: the dashboard loads before the first event
        assert set(view) <= {"title", "name", "timeFieldName", "allowNoIndex", "fieldFormatMap", "runtimeFieldMap"}
        assert view["allowNoIndex"] is True
        return
    # OpenSearch Dashboards caches the field list in the pattern: give it the mapping's, so panels work at once
    fields = {f["name"]: f for f in json.loads(view["fields"])}
    for field, es_type in MAPPED.items():
        spec = fields.pop(field)
        kind = "date" if es_type == "date" else "number" if es_type in NUMERIC else "string"
        assert (spec["type"], spec["esTypes"]) == (kind, [es_type]), field
        assert spec["searchable"] and spec["aggregatable"] == (es_type != "text") == spec["readFromDocValues"]
    assert set(fields) == {"_index", "_source"}  # the meta fields an index pattern it exports lists


# -- Kibana: Lens visualizations on the data view ------------------------------------------------------------------

LENS_FIELD_TYPES = {
    "date_histogram": {"date", "date_nanos"},
    "terms": {"keyword"},
    "percentile": NUMERIC,
    "average": NUMERIC,
    "sum": NUMERIC,
    "median": NUMERIC,
    "min": NUMERIC,
    "max": NUMERIC,
}
# Kibana's dashboard saved object forbids attributes outside its schema (dashboard_saved_object/schema/v1).
DASHBOARD_ATTRIBUTES = {
    "title",
    "description",
    "kibanaSavedObjectMeta",
    "timeRestore",
    "timeFrom",
    "timeTo",
    "refreshInterval",
    "controlGroupInput",
    "panelsJSON",
    "optionsJSON",
    "hits",
    "version",
}


def _lens_layers(lens: dict[str, Any]) -> dict[str, Any]:
    layers: dict[str, Any] = lens["attributes"]["state"]["datasourceStates"]["formBased"]["layers"]
    return layers


def _check_formula(column_id: str, columns: dict[str, Any]) -> set[str]:
    """A formula column and the helper columns Lens keeps for it: each `op(field)` in the text is one helper."""
    formula = columns[column_id]["params"]["formula"]
    calls = re.findall(r"(\w+)\(([\w.@]+)\)", formula)
    helpers = {c: v for c, v in columns.items() if c.startswith(column_id + "X")}
    sourced = sorted((v["operationType"], v["sourceField"]) for v in helpers.values() if "sourceField" in v)
    assert sourced == sorted(calls), (formula, sourced)
    (math,) = [c for c, v in helpers.items() if v["operationType"] == "math"]
    assert columns[column_id]["references"] == [math]
    assert helpers[math]["params"]["tinymathAst"]["text"] == formula
    assert set(helpers[math]["references"]) == set(helpers) - {math}
    return {field for _, field in calls}


def test_every_lens_column_uses_a_mapped_field_of_a_type_its_operation_takes() -> None:
    objects = _objects("kibana")
    view_id = _data_view(objects)["id"]
    used: set[str] = set()
    for lens in _by_type(objects, "lens"):
        refs = {r["name"]: r["id"] for r in lens["references"]}
        vis = lens["attributes"]["state"]["visualization"]
        for layer_id, layer in _lens_layers(lens).items():
            assert refs[f"indexpattern-datasource-layer-{layer_id}"] == view_id, lens["id"]
            columns = layer["columns"]
            assert sorted(layer["columnOrder"]) == sorted(columns), lens["id"]
            for column_id, column in columns.items():
                op = column["operationType"]
                if op == "formula":
                    for field in _check_formula(column_id, columns):
                        _needs(field, NUMERIC, f"{lens['id']} formula")
                        used.add(field)
                elif op == "count":
                    assert column["sourceField"] == "___records___"
                elif op in LENS_FIELD_TYPES:
                    _needs(column["sourceField"], LENS_FIELD_TYPES[op], f"{lens['id']} {op}")
                    used.add(column["sourceField"])
                else:  # a formula's own helper (checked with the formula)
                    formulas = [c for c, v in columns.items() if v["operationType"] == "formula"]
                    assert op == "math" and column_id.startswith(tuple(f + "X" for f in formulas)), (lens["id"], op)
                if op == "terms":
                    assert column["params"]["orderBy"]["columnId"] in columns
            (xy,) = [v for v in vis["layers"] if v["layerId"] == layer_id]
            accessors = [xy["xAccessor"], *xy["accessors"], *([xy["splitAccessor"]] if "splitAccessor" in xy else [])]
            assert set(accessors) <= set(columns), lens["id"]
            assert columns[xy["xAccessor"]]["operationType"] == "date_histogram"  # each panel is over time
    assert used >= {"@timestamp", "outcome", "added_ms", "reranked", "window", "reason", "shadow.overlap_at_10"}


def test_the_kibana_panels_are_the_ones_asked_for() -> None:
    lenses = {o["id"]: o for o in _by_type(_objects("kibana"), "lens")}

    def columns(lens_id: str) -> dict[str, Any]:
        (layer,) = _lens_layers(lenses[lens_id]).values()
        cols: dict[str, Any] = layer["columns"]
        return cols

    outcomes = columns("rerank-sidecar-events-outcomes")
    assert {(c["operationType"], c.get("sourceField")) for c in outcomes.values()} >= {("terms", "outcome")}
    percentiles = {
        c["params"]["percentile"]
        for c in columns("rerank-sidecar-events-latency").values()
        if c["operationType"] == "percentile" and c["sourceField"] == "added_ms"
    }
    assert percentiles >= {50, 99}
    (share,) = [c for c in columns("rerank-sidecar-events-reranked-share").values() if c["operationType"] == "formula"]
    assert share["params"]["formula"] == "sum(reranked) / sum(window)"
    assert share["params"]["format"]["id"] == "percent"
    fallback = lenses["rerank-sidecar-events-fallback-reasons"]["attributes"]["state"]
    assert fallback["query"] == {"query": 'outcome : "fallback"', "language": "kuery"}
    assert any(c.get("sourceField") == "reason" for c in columns("rerank-sidecar-events-fallback-reasons").values())
    shadow = columns("rerank-sidecar-events-shadow-overlap")
    assert ("average", "shadow.overlap_at_10") in {(c["operationType"], c.get("sourceField")) for c in shadow.values()}


@pytest.mark.parametrize("name", sorted(SAVED_OBJECTS))
def test_the_dashboard_panels_point_at_the_files_visualizations(name: str) -> None:
    objects = _objects(name)
    (dashboard,) = _by_type(objects, "dashboard")
    attributes = dashboard["attributes"]
    if name == "kibana":
        assert set(attributes) <= DASHBOARD_ATTRIBUTES
    panels = json.loads(attributes["panelsJSON"])
    refs = {r["name"]: (r["type"], r["id"]) for r in dashboard["references"]}
    kinds = {(o["type"], o["id"]) for o in objects}
    assert len({p["panelIndex"] for p in panels}) == len(panels) == 5
    for panel in panels:
        grid = panel["gridData"]
        assert grid["i"] == panel["panelIndex"] and grid["x"] + grid["w"] <= 48 and grid["h"] > 0
        # Kibana 8+ names a panel's reference `<panelIndex>:<panelRefName>`; OpenSearch Dashboards (7.10) by the name
        ref = f"{panel['panelIndex']}:{panel['panelRefName']}" if name == "kibana" else panel["panelRefName"]
        assert refs[ref] in kinds, ref
        if name == "kibana":
            assert panel["type"] == refs[ref][0] == "lens"
    json.loads(attributes["optionsJSON"])
    json.loads(attributes["kibanaSavedObjectMeta"]["searchSourceJSON"])


# -- OpenSearch Dashboards: aggregation-based visualizations and TSVB ------------------------------------------------

OSD_FIELD_TYPES = {
    "date_histogram": {"date", "date_nanos"},
    "terms": {"keyword"} | NUMERIC,
    "percentiles": NUMERIC,
    "avg": NUMERIC,
    "sum": NUMERIC,
    "min": NUMERIC,
    "max": NUMERIC,
    "median": NUMERIC,
}


def test_every_opensearch_dashboards_aggregation_uses_a_mapped_field_of_a_type_it_takes() -> None:
    objects = _objects("opensearch_dashboards")
    view = _data_view(objects)
    used: dict[str, set[str]] = {}
    for vis in _by_type(objects, "visualization"):
        state = json.loads(vis["attributes"]["visState"])
        assert state["title"] == vis["attributes"]["title"]
        source = json.loads(vis["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"])
        if state["type"] == "metrics":  # TSVB names its index pattern by title, not by reference
            params = state["params"]
            assert params["index_pattern"] == view["attributes"]["title"]
            _needs(params["time_field"], {"date", "date_nanos"}, vis["id"])
            for series in params["series"]:
                ids = {m["id"] for m in series["metrics"]}
                for metric in series["metrics"]:
                    if metric["type"] == "math":
                        assert {v["field"] for v in metric["variables"]} <= ids
                        names = {v["name"] for v in metric["variables"]}
                        assert set(re.findall(r"params\.(\w+)", metric["script"])) <= names
                    else:
                        _needs(metric["field"], OSD_FIELD_TYPES[metric["type"]], vis["id"])
                        used.setdefault(metric["type"], set()).add(metric["field"])
            continue
        assert source["indexRefName"] == "kibanaSavedObjectMeta.searchSourceJSON.index"
        assert {r["name"]: r["id"] for r in vis["references"]}[source["indexRefName"]] == view["id"]
        metric_ids = {a["id"] for a in state["aggs"] if a["schema"] == "metric"}
        assert {s["data"]["id"] for s in state["params"]["seriesParams"]} == metric_ids, vis["id"]
        for agg in state["aggs"]:
            if agg["type"] == "count":
                continue
            _needs(agg["params"]["field"], OSD_FIELD_TYPES[agg["type"]], f"{vis['id']} {agg['type']}")
            used.setdefault(agg["type"], set()).add(agg["params"]["field"])
            if agg["type"] == "terms":
                assert agg["params"]["orderBy"] in metric_ids
            if agg["type"] == "percentiles":
                assert {50, 99} <= set(agg["params"]["percents"])
    assert used["terms"] == {"outcome", "reason"} and used["percentiles"] == {"added_ms"}
    assert used["sum"] == {"reranked", "window"} and "shadow.overlap_at_10" in used["avg"]
    assert used["date_histogram"] == {"@timestamp"}


def test_both_dashboards_filter_the_fallback_and_shadow_panels_the_same_way() -> None:
    kibana = {o["id"]: o["attributes"]["state"]["query"] for o in _by_type(_objects("kibana"), "lens")}
    osd = {
        o["id"]: json.loads(o["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"])["query"]
        for o in _by_type(_objects("opensearch_dashboards"), "visualization")
    }
    assert kibana == osd
    assert kibana["rerank-sidecar-events-fallback-reasons"]["query"] == 'outcome : "fallback"'
