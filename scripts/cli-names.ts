/**
 * Which connection and pipeline names exist, for commands that take one (`tail`, `dlq`): a name
 * nobody configured and nothing stored is a typo, and the command says so instead of waiting
 * forever or reporting "0". Names come from the pipelines directory, read leniently (only the
 * names: a file whose ${VAR}s are not set here still names its connection), and from the subjects
 * the streams hold, so a connection removed from the configuration but with stored events or dead
 * letters still counts.
 */
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { parse } from "yaml";
import type { JetStreamManager } from "@nats-io/jetstream";
import { STREAM, SUBJECT_ROOT } from "../src/bus/subjects.ts";
import { eventStreams, isStreamNotFound } from "../src/bus/connection.ts";
import { DLQ_STREAM } from "../src/bus/dead-letters.ts";
import { RAW_PIPELINE } from "../src/pipeline/raw-stage.ts";

export interface KnownNames {
  /** Connection → its pipeline names (for a raw connection, its table's "(raw table)"). */
  connections: Map<string, Set<string>>;
  /** Where the names were looked for, for the message. */
  where: string[];
}

const add = (names: Map<string, Set<string>>, connection: string, pipeline?: string) => {
  let set = names.get(connection);
  if (!set) names.set(connection, (set = new Set()));
  if (pipeline !== undefined) set.add(pipeline);
};

/** The names in a pipelines directory; a missing directory or an unreadable file names nothing. */
export function configuredNames(dir: string, into: KnownNames = { connections: new Map(), where: [] }): KnownNames {
  let files: string[];
  try {
    files = readdirSync(dir).filter((f) => /\.ya?ml$/.test(f));
    into.where.push(`the pipelines directory ${dir}`);
  } catch {
    into.where.push(`no pipelines directory at ${dir}; set TRIBUTARY_PIPELINES`);
    return into;
  }
  for (const f of files) {
    let doc: unknown;
    try {
      doc = parse(readFileSync(join(dir, f), "utf8"), { logLevel: "silent" });
    } catch {
      continue;
    }
    if (typeof doc !== "object" || doc === null) continue;
    const c = doc as { connection?: unknown; source?: unknown; pipelines?: unknown };
    if (typeof c.connection !== "string") continue;
    add(into.connections, c.connection);
    if (c.source === "raw") add(into.connections, c.connection, RAW_PIPELINE);
    if (Array.isArray(c.pipelines))
      for (const p of c.pipelines) if (typeof p?.name === "string") add(into.connections, c.connection, p.name);
  }
  return into;
}

/** `%2F` back to `/`: dead-letter subjects percent-encode what a subject token cannot hold. */
function decodeToken(token: string): string {
  try {
    return decodeURIComponent(token);
  } catch {
    return token;
  }
}

/** The names the events and dead-letter streams hold subjects for (streams not created yet name nothing). */
export async function storedNames(
  jsm: JetStreamManager,
  into: KnownNames = { connections: new Map(), where: [] },
): Promise<KnownNames> {
  const subjects = async (stream: string, filter: string) => {
    try {
      return Object.keys((await jsm.streams.info(stream, { subjects_filter: filter })).state.subjects ?? {});
    } catch (e) {
      if (isStreamNotFound(e)) return [];
      throw e;
    }
  };
  const events = await eventStreams(jsm).catch(() => [STREAM]);
  for (const stream of events.length ? events : [STREAM])
    for (const s of await subjects(stream, `${SUBJECT_ROOT}.>`)) add(into.connections, s.split(".")[2]!);
  for (const s of await subjects(DLQ_STREAM, "tributary.dlq.>")) {
    const [, , connection, token] = s.split(".");
    if (connection) add(into.connections, connection, token === undefined ? undefined : decodeToken(token));
  }
  into.where.push(`the subjects of ${STREAM} and ${DLQ_STREAM}`);
  return into;
}
