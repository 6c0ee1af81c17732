#!/usr/bin/env bash
# Checks and builds the SAM application without an AWS account or Docker:
#   1. installs the build tools (scripts/python-tools.sh) and checks the arm64 Rust target;
#   2. compares template.yaml's Keyspaces tables with etc/schema.cql, column for column;
#   3. sam validate --lint;
#   4. sam build (cargo lambda build --release --arm64, linked with zig), timed;
#   5. prints the size of each function's bootstrap.
#   scripts/sam-check.sh [--no-build]
# sam build compiles every function into the workspace's shared target/ (target/lambda/<fn>/),
# so the dependencies are compiled once, not once per function; CARGO_TARGET_DIR overrides it.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

build=1
case ${1:-} in
  --no-build) build=0 ;;
  "") ;;
  *) echo "usage: scripts/sam-check.sh [--no-build]" >&2; exit 2 ;;
esac

log() { echo "sam-check: $*" >&2; }

"$ROOT/scripts/python-tools.sh"
eval "$("$ROOT/scripts/python-tools.sh" --env)"
# sam needs a region to resolve pseudo parameters; nothing here talks to AWS.
export AWS_DEFAULT_REGION=${AWS_DEFAULT_REGION:-us-east-1}
export SAM_CLI_TELEMETRY=0

TARGET=aarch64-unknown-linux-gnu
if ! rustup target list --installed | grep -qx "$TARGET"; then
  log "adding the Rust target $TARGET"
  rustup target add "$TARGET" || { log "rustup could not add $TARGET"; exit 1; }
fi

log "comparing template.yaml's Keyspaces tables with etc/schema.cql"
python3 - template.yaml etc/schema.cql <<'EOF'
import re, sys
from samcli.yamlhelper import yaml_parse

template_path, schema_path = sys.argv[1], sys.argv[2]

def from_cql(text):
    text = re.sub(r"--[^\n]*", "", text)
    tables = {}
    for stmt in filter(None, (s.strip() for s in text.split(";"))):
        m = re.match(r"(?is)CREATE\s+TABLE\s+IF\s+NOT\s+EXISTS\s+(\w+)\s*\((.*?)\)\s*(?:WITH\s+(.*))?$", stmt)
        if not m:
            sys.exit(f"{schema_path}: cannot read statement: {stmt[:60]!r}")
        name, body, options = m.group(1), m.group(2), m.group(3) or ""
        pk = re.search(r"(?is)PRIMARY\s+KEY\s*\((.*)\)", body)
        columns = {}
        for line in body[: pk.start()].split(","):
            if line.strip():
                col, typ = line.split()
                columns[col] = typ.lower()
        key = pk.group(1).strip()
        if key.startswith("("):
            part, _, rest = key[1:].partition(")")
        else:
            part, _, rest = key.partition(",")
        part = [c.strip() for c in part.split(",") if c.strip()]
        clustering = [c.strip() for c in rest.split(",") if c.strip()]
        order = dict(re.findall(r"(\w+)\s+(ASC|DESC)", options, re.I))
        tables[name] = {
            "partition": [(c, columns[c]) for c in part],
            "clustering": [(c, columns[c], order.get(c, "ASC").upper()) for c in clustering],
            "regular": {(c, t) for c, t in columns.items() if c not in part and c not in clustering},
        }
    return tables

def from_template(doc):
    tables = {}
    for res in doc["Resources"].values():
        if res["Type"] != "AWS::Cassandra::Table":
            continue
        p = res["Properties"]
        col = lambda c: (c["ColumnName"], c["ColumnType"].lower())
        tables[p["TableName"]] = {
            "partition": [col(c) for c in p["PartitionKeyColumns"]],
            "clustering": [col(c["Column"]) + (c.get("OrderBy", "ASC"),) for c in p.get("ClusteringKeyColumns", [])],
            "regular": {col(c) for c in p.get("RegularColumns", [])},
        }
    return tables

cql = from_cql(open(schema_path).read())
cfn = from_template(yaml_parse(open(template_path).read()))
problems = []
for name in sorted(cql.keys() | cfn.keys()):
    if name not in cfn:
        problems.append(f"table {name} is in {schema_path} but not in {template_path}")
    elif name not in cql:
        problems.append(f"table {name} is in {template_path} but not in {schema_path}")
    else:
        for part in ("partition", "clustering", "regular"):
            if cql[name][part] != cfn[name][part]:
                problems.append(f"table {name}, {part} columns: schema {cql[name][part]} != template {cfn[name][part]}")
if problems:
    sys.exit("\n".join(problems))
print(f"sam-check: {len(cql)} tables match: {', '.join(sorted(cql))}", file=sys.stderr)
EOF

log "sam validate --lint"
sam validate --lint --template template.yaml

if [[ $build == 0 ]]; then
  exit 0
fi

log "sam build (release, LTO, arm64: the first build compiles every dependency; minutes on 2 cores)"
start=$(date +%s)
sam build --template template.yaml
log "sam build took $(($(date +%s) - start)) s"

for f in .aws-sam/build/*/bootstrap; do
  printf 'sam-check: %-28s %9d bytes  %s\n' "$(basename "$(dirname "$f")")" "$(stat -c %s "$f")" \
    "$(file -b "$f" | cut -d, -f1-2)" >&2
done
