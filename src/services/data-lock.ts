import { mkdirSync, readFileSync, unlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describeHolder } from "./port-check.ts";

/** Another live node runs its local services on this data directory. */
export class DataDirInUseError extends Error {
  readonly code = "DATA_DIR_IN_USE";
  constructor(
    readonly dir: string,
    readonly pid: number,
  ) {
    super(
      `data directory ${dir} is in use by ${describeHolder({ pid, command: commandOf(pid) })}, which runs its local nats-server and clickhouse-server there; ` +
        `set TRIBUTARY_DATA to another directory, or NATS_URL and CLICKHOUSE_URL to share that node's services`,
    );
    this.name = "DataDirInUseError";
  }
}

function commandOf(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").filter(Boolean).join(" ") || "?";
  } catch {
    return "?";
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as { code?: string }).code === "EPERM"; // someone else's, but alive
  }
}

/**
 * Claims `dir` for this process's local services: two nodes starting nats-server and
 * clickhouse-server on one store would corrupt it or fail with the services' own lock errors.
 * The claim is `tributary.pid`; one left by a process that is gone is taken over. Returns the
 * release function.
 */
export function lockDataDir(dir: string): () => void {
  mkdirSync(dir, { recursive: true });
  const file = join(dir, "tributary.pid");
  for (let attempt = 0; ; attempt++) {
    try {
      writeFileSync(file, `${process.pid}\n`, { flag: "wx" });
      break;
    } catch (e) {
      if ((e as { code?: string }).code !== "EEXIST" || attempt > 0) throw e;
      const pid = Number(readFileSync(file, "utf8").trim());
      if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && alive(pid) && /main\.ts|^\?$/.test(commandOf(pid)))
        throw new DataDirInUseError(dir, pid);
      unlinkSync(file); // stale: its node is gone (and its pid maybe reused by something else)
    }
  }
  return () => {
    try {
      if (readFileSync(file, "utf8").trim() === String(process.pid)) unlinkSync(file);
    } catch {}
  };
}
