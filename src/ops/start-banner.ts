import { isAbsolute, relative } from "node:path";
import type { LoadedConnection } from "../config/loader.ts";

/**
 * What a person who just ran `npm start` in a terminal needs: where the node is, where to send
 * events for each connection, whether the debugger is on, and one request to try. Write keys are
 * never printed (the terminal may be shared or recorded): the curl line has a placeholder.
 */
export interface BannerInput {
  version: string;
  /** The address the node listens on (HOST) and its port. */
  host: string;
  port: number;
  connections: LoadedConnection[];
  admin: { token: boolean; dev: boolean };
  /** The services in use, and whether this process started them. */
  services: { nats: string; clickhouse?: string; local: boolean; dataDir: string };
}

/** A URL a browser or curl on this machine can use for a node bound to `host`. */
export function displayUrl(host: string, port: number): string {
  const h =
    host === "" || host === "0.0.0.0" || host === "::" || host === "[::]"
      ? "localhost"
      : host.includes(":") && !host.startsWith("[")
        ? `[${host}]`
        : host;
  return `http://${h}:${port}`;
}

/** Relative to the working directory when under it, as the user would type it. */
function shortPath(file: string): string {
  const r = relative(process.cwd(), file);
  return r && !r.startsWith("..") && !isAbsolute(r) ? r : file;
}

const EVENT_ROUTES = "also /v1/events, /v1/track, /v1/identify, /v1/page, …";

export function banner(b: BannerInput): string {
  const base = displayUrl(b.host, b.port);
  const out: string[] = ["", `Tributary ${b.version} is listening on ${base}  (Ctrl-C stops it)`, ""];
  const width = Math.max(10, ...b.connections.map((c) => c.connection.length));
  const endpoint = (c: LoadedConnection) =>
    c.source === "raw" ? `${base}/v1/webhooks/${c.connection}` : `${base}/v1/batch`;
  if (b.connections.length) {
    const events = b.connections.some((c) => c.source !== "raw");
    out.push(`  Connections${events ? "  (for event sources the write key picks the connection)" : ""}`);
    for (const c of b.connections) {
      const kind = c.source === "raw" ? "raw webhook" : c.source;
      out.push(
        `    ${c.connection.padEnd(width)}  ${kind.padEnd(11)}  POST ${endpoint(c)}${c.source === "raw" ? "" : `  (${EVENT_ROUTES})`}`,
      );
    }
  } else {
    out.push("  Connections  none: add a connection file to the pipelines directory (see pipelines/example.yaml)");
  }
  out.push("");
  const debuggerUrl = `${base}/debugger`;
  if (b.admin.token) out.push(`  Debugger     ${debuggerUrl}  (asks for TRIBUTARY_ADMIN_TOKEN)`);
  else if (b.admin.dev)
    out.push(`  Debugger     ${debuggerUrl}  (TRIBUTARY_DEV_ADMIN: no token, from this machine only)`);
  else out.push("  Debugger     off: set TRIBUTARY_ADMIN_TOKEN=<token>, or TRIBUTARY_DEV_ADMIN=1 on your own machine");
  const services = [
    `NATS ${b.services.nats}`,
    b.services.clickhouse ? `ClickHouse ${b.services.clickhouse}` : "no ClickHouse (events wait in JetStream)",
  ].join(" · ");
  out.push(
    `  Services     ${services}${b.services.local ? `  (started here, data in ${/^[./]/.test(b.services.dataDir) ? b.services.dataDir : `./${b.services.dataDir}`})` : ""}`,
  );
  out.push("");
  const event = b.connections.find((c) => c.source !== "raw");
  const raw = b.connections.find((c) => c.source === "raw");
  if (event) {
    out.push(
      "  Try it:",
      `    curl -X POST ${base}/v1/track \\`,
      `      -H 'Authorization: Bearer <write key>' -H 'Content-Type: application/json' \\`,
      `      -d '{"event":"Hello","userId":"u-1"}'`,
      `    <write key>: one of the writeKeys of "${event.connection}" in ${shortPath(event.file)}`,
    );
  } else if (raw) {
    out.push(
      "  Try it:",
      `    curl -X POST ${endpoint(raw)} -H 'Content-Type: application/json' -d '{"hello":"world"}'`,
    );
    if (raw.check) out.push("    (its `check` refuses a request without the sender's signature or header)");
  }
  out.push("");
  return out.join("\n") + "\n";
}
