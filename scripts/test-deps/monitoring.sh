#!/usr/bin/env bash
# Install what the monitoring tests start or read: mosquitto (+ clients), victoria-metrics (a
# database that takes InfluxDB v2 writes), openssl (test CA), and Grafana's dashboard JSON schema,
# generated from npm's @grafana/schema into .tools/grafana-schema/ (with js-yaml, which the tests
# use to parse the compose and provisioning YAML). Idempotent; `apt-get update`
# runs only when a package is missing.
set -euo pipefail
cd "$(dirname "$0")/../.."

missing=()
for pair in mosquitto:mosquitto mosquitto_passwd:mosquitto-clients mosquitto_pub:mosquitto-clients \
            victoria-metrics:victoria-metrics openssl:openssl node:nodejs npm:npm; do
  cmd=${pair%%:*}
  pkg=${pair#*:}
  if ! command -v "$cmd" >/dev/null 2>&1 && [[ ! " ${missing[*]:-} " =~ " $pkg " ]]; then
    missing+=("$pkg")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "test-deps/monitoring: installing ${missing[*]}" >&2
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

tools=.tools/grafana-schema
schema="$tools/dashboard.schema.json"
if [ ! -s "$schema" ] || [ ! -f "$tools/node_modules/js-yaml/bin/js-yaml.js" ]; then
  echo "test-deps/monitoring: generating Grafana's dashboard JSON schema in $tools" >&2
  mkdir -p "$tools"
  if [ ! -f "$tools/package.json" ]; then
    printf '{\n  "name": "facematch-grafana-schema",\n  "private": true\n}\n' > "$tools/package.json"
  fi
  (cd "$tools" &&
    npm install --no-audit --no-fund --silent \
      @grafana/schema@13.2.3 ts-json-schema-generator@2.4.0 typescript@7.0.2 js-yaml@4.1.0 &&
    npx --no-install ts-json-schema-generator \
      --path node_modules/@grafana/schema/dist/types/raw/dashboard/x/types.gen.d.ts \
      --type Dashboard --no-type-check -o dashboard.schema.json.tmp &&
    mv dashboard.schema.json.tmp dashboard.schema.json)
fi
