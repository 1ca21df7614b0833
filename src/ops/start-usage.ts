import { defaults } from "../config/env.ts";
import { LOG_LEVELS } from "../util/log.ts";

/** `npm start -- --help`: what the node reads, with the defaults it uses when a variable is unset. */
export const USAGE = `Usage: npm start [-- --help]        (or: bun src/main.ts)

Runs a Tributary node: HTTP ingestion on PORT, events into NATS JetStream, pipelines into
ClickHouse. Without NATS_URL / CLICKHOUSE_URL it starts a local nats-server and clickhouse-server
with their data under TRIBUTARY_DATA, and stops them when it stops (Ctrl-C). It refuses to start
when a port it needs is taken, and says what holds it.

Environment (default):
  PORT                     HTTP port (${defaults.port})
  HOST                     address to listen on (${defaults.host})
  NATS_URL                 NATS server(s), comma-separated (unset: start a local nats-server)
  CLICKHOUSE_URL           ClickHouse HTTP URL(s), comma-separated replicas (unset: start a local clickhouse-server)
  CLICKHOUSE_USER          (${defaults.clickhouseUser})      CLICKHOUSE_PASSWORD (empty)
  TRIBUTARY_DATABASE       ClickHouse database (${defaults.database})
  TRIBUTARY_PIPELINES      directory of connection and pipeline files (./${defaults.pipelinesDir})
  TRIBUTARY_DATA           data directory of the local services (./${defaults.dataDir})
  NATS_PORT                local nats-server port (${defaults.natsPort})
  CLICKHOUSE_HTTP_PORT     local clickhouse-server HTTP port (${defaults.clickhouseHttpPort})
  CLICKHOUSE_TCP_PORT      local clickhouse-server native port (${defaults.clickhouseTcpPort})
  TRIBUTARY_ADMIN_TOKEN    enables the admin API and the debugger (/debugger) behind this token
  TRIBUTARY_DEV_ADMIN=1    without a token: admin API and debugger open to this machine only (development)
  TRUST_PROXY=1            take the client address from the first X-Forwarded-For hop
  LOG_LEVEL                ${LOG_LEVELS.join(" | ")} (${defaults.logLevel})
  LOG_FORMAT               pretty | json (pretty on a terminal, with a start-up banner; json otherwise)

Limits and tuning (TRIBUTARY_MAX_REQUEST_BYTES, TRIBUTARY_STREAM_MAX_BYTES, TRIBUTARY_BATCH_*, …):
see "Configuration" in README.md.
Other commands: npm run check | tail | stream | replay | dlq -- --help
`;
