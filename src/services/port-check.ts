import { readFileSync, readdirSync, readlinkSync } from "node:fs";

/**
 * Who listens on a TCP port, so that a node refusing to start can say what holds the port it
 * wanted. Linux only (/proc); elsewhere, or for another user's process, the holder is unknown.
 */

/** A process holding a listening socket. */
export interface PortHolder {
  pid: number;
  /** Its command line, shortened. */
  command: string;
}

/** One port a node or one of its local services listens on, and what to tell the user if it is taken. */
export interface PortUse {
  port: number;
  /** What listens there: "HTTP", "local nats-server", … */
  role: string;
  /** How to get out of the way: which variable moves it. */
  hint: string;
}

/** A port we need is held by another process (another Tributary node included). */
export class PortInUseError extends Error {
  readonly code = "PORT_IN_USE";
  constructor(
    readonly use: PortUse,
    readonly holder: PortHolder | undefined,
  ) {
    super(`port ${use.port} (${use.role}) is already in use by ${describeHolder(holder)}; ${use.hint}`);
    this.name = "PortInUseError";
  }
}

export function describeHolder(holder: PortHolder | undefined): string {
  if (!holder) return "another process";
  // `bun src/main.ts`, `bun /srv/tributary/src/main.ts` (`npm start` runs the former)
  const tributary = /(^|[\s/])src\/main\.ts(\s|$)/.test(holder.command);
  return `${tributary ? "another Tributary node" : "another process"} (pid ${holder.pid}: ${holder.command})`;
}

/** Inodes of the sockets listening on `port` (IPv4 and IPv6); empty when /proc is not readable. */
export function listeningInodes(port: number): Set<string> {
  const inodes = new Set<string>();
  for (const file of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    let text: string;
    try {
      text = readFileSync(file, "utf8");
    } catch {
      continue;
    }
    for (const line of text.split("\n").slice(1)) {
      // sl local_address rem_address st … uid timeout inode
      const cols = line.trim().split(/\s+/);
      if (cols.length < 10 || cols[3] !== "0A") continue; // 0A = LISTEN
      const local = cols[1]!;
      if (parseInt(local.slice(local.lastIndexOf(":") + 1), 16) === port && cols[9] !== "0") inodes.add(cols[9]!);
    }
  }
  return inodes;
}

/** Whether process `pid` holds one of these socket inodes among its file descriptors. */
function holds(pid: number, inodes: Set<string>): boolean {
  let fds: string[];
  try {
    fds = readdirSync(`/proc/${pid}/fd`);
  } catch {
    return false; // gone, or another user's
  }
  for (const fd of fds) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
      if (m && inodes.has(m[1]!)) return true;
    } catch {}
  }
  return false;
}

function commandOf(pid: number): string {
  try {
    const cmd = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").filter(Boolean).join(" ");
    return cmd.length > 120 ? `${cmd.slice(0, 119)}…` : cmd || "?";
  } catch {
    return "?";
  }
}

/** The process listening on `port`, when /proc lets us see it (our own user's processes). */
export function portHolder(port: number): PortHolder | undefined {
  const inodes = listeningInodes(port);
  if (!inodes.size) return undefined;
  let pids: number[];
  try {
    pids = readdirSync("/proc")
      .filter((d) => /^\d+$/.test(d))
      .map(Number);
  } catch {
    return undefined;
  }
  for (const pid of pids) if (holds(pid, inodes)) return { pid, command: commandOf(pid) };
  return undefined;
}

/**
 * Whether `pid` is what listens on `port`: true or false when /proc says, undefined when it
 * cannot tell (nothing listening yet, or no /proc).
 */
export function listensOn(pid: number, port: number): boolean | undefined {
  const inodes = listeningInodes(port);
  if (!inodes.size) return undefined;
  return holds(pid, inodes);
}

/**
 * Throws {@link PortInUseError} when `port` cannot be bound on `host` right now. The probe binds
 * without SO_REUSEPORT, as the node does, so a listener that shares ports (an older node did)
 * counts as taken too.
 */
export function ensurePortFree(use: PortUse, host = "127.0.0.1"): void {
  if (!use.port) return; // 0: the OS picks a free one
  let listener: { stop(closeActive?: boolean): void } | undefined;
  try {
    listener = Bun.listen({ hostname: host, port: use.port, socket: { data() {} } });
  } catch (e) {
    if ((e as { code?: string }).code === "EADDRINUSE") throw new PortInUseError(use, portHolder(use.port));
    throw e;
  } finally {
    listener?.stop(true);
  }
}
