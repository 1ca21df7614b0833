import type { Subprocess } from "bun";
import { closeSync, openSync, readSync, fstatSync } from "node:fs";
import { PortInUseError, listensOn, portHolder, type PortUse } from "./port-check.ts";

export interface ManagedProcessOptions {
  name: string;
  cmd: string[];
  /** Where the process's stdout/stderr go. */
  logFile: string;
  /** Resolves once the service is usable. */
  ready: (alive: () => boolean) => Promise<void>;
  /**
   * The ports it opens. Checked once it is ready: a port some other process holds means ours
   * failed to bind it (and `ready` may have been answered by that other process).
   */
  listens?: PortUse[];
}

/** A service we started that did not come up; the message carries the last line of its log. */
export class ServiceStartError extends Error {
  readonly code = "SERVICE_START_FAILED";
  constructor(message: string) {
    super(message);
    this.name = "ServiceStartError";
  }
}

/** The last non-empty line a log file got since offset `from` (within its last 4 KiB), for an error message. */
function lastLine(file: string, from: number): string | undefined {
  try {
    const fd = openSync(file, "r");
    try {
      const size = fstatSync(fd).size;
      const buf = Buffer.alloc(Math.max(0, Math.min(size - from, 4096)));
      readSync(fd, buf, 0, buf.length, size - buf.length);
      const line = buf
        .toString("utf8")
        .split("\n")
        .map((l) => l.trim())
        .filter(Boolean)
        .pop();
      return line && line.length > 300 ? `${line.slice(0, 299)}…` : line;
    } finally {
      closeSync(fd);
    }
  } catch {
    return undefined;
  }
}

/**
 * A local service we started and own: started, killed (for fault tests) and restarted with the
 * same data. Killed with the process group's parent, never left behind.
 */
export class ManagedProcess {
  #proc?: Subprocess;
  static readonly all = new Set<ManagedProcess>();

  constructor(readonly options: ManagedProcessOptions) {}

  get pid(): number | undefined {
    return this.#proc?.pid;
  }
  get running(): boolean {
    return this.#proc !== undefined && this.#proc.exitCode === null && this.#proc.signalCode === null;
  }

  async start(): Promise<void> {
    if (this.running) return;
    const fd = openSync(this.options.logFile, "a");
    const logStart = fstatSync(fd).size;
    // Its own process group: a Ctrl-C in the terminal reaches us only, and we stop the services
    // after the node has finished its in-flight writes.
    this.#proc = Bun.spawn(this.options.cmd, { stdout: fd, stderr: fd, stdin: "ignore", detached: true });
    ManagedProcess.all.add(this);
    closeSync(fd);
    try {
      await this.options.ready(() => this.running);
      this.#checkPorts();
    } catch (e) {
      await this.stop();
      if (e instanceof PortInUseError) throw e;
      const said = lastLine(this.options.logFile, logStart);
      throw new ServiceStartError(
        `${this.options.name} did not start: ${(e as Error).message}${said ? `; its log says: ${said}` : ""} (${this.options.logFile})`,
      );
    }
  }

  /** Never report as started a service whose port another process answered on. */
  #checkPorts(): void {
    const pid = this.pid;
    if (pid === undefined) return;
    for (const use of this.options.listens ?? []) {
      if (listensOn(pid, use.port) === false) throw new PortInUseError(use, portHolder(use.port));
    }
  }

  /** SIGKILL: the process gets no chance to flush, as in a crash. */
  async kill(): Promise<void> {
    if (!this.#proc) return;
    this.#proc.kill("SIGKILL");
    await this.#proc.exited;
  }

  /** SIGSTOP: the process holds its sockets but answers nothing, like a hung or overloaded server. */
  pause(): void {
    this.#proc?.kill("SIGSTOP");
  }

  resume(): void {
    this.#proc?.kill("SIGCONT");
  }

  /** SIGTERM, then SIGKILL after a grace period. */
  async stop(graceMs = 10_000): Promise<void> {
    const p = this.#proc;
    if (!p) return;
    ManagedProcess.all.delete(this);
    if (p.exitCode === null && p.signalCode === null) {
      p.kill("SIGCONT"); // a paused process cannot act on SIGTERM
      p.kill("SIGTERM");
      const t = setTimeout(() => p.kill("SIGKILL"), graceMs);
      await p.exited;
      clearTimeout(t);
    }
    this.#proc = undefined;
  }

  async restart(): Promise<void> {
    await this.stop();
    await this.start();
  }

  /** Last resort on exit: nothing we started outlives us. */
  static killAllSync(): void {
    for (const m of ManagedProcess.all) m.#proc?.kill("SIGKILL");
  }
}
