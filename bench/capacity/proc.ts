// CPU and memory of a bench component, read from /proc. A component is a set of processes named
// by label (the NATS cluster is three servers; a Tributary node is its own process and the
// pipeline worker processes it spawns, which its /proc/<pid>/stat does not count).
import { readdirSync, readFileSync } from "node:fs";

const CLK_TCK = 100; // Linux USER_HZ: /proc times are in 1/100 s on every mainstream kernel

export interface ProcSample {
  /** utime + stime, seconds (every thread of the process; not its children). */
  cpu: number;
  rss: number;
  hwm: number;
}

/** undefined once the process is gone. */
export function sample(pid: number): ProcSample | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    const kb = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, "m").exec(status)?.[1] ?? 0) * 1024;
    // f[0] is field 3 (state): utime is field 14, stime field 15.
    return { cpu: (Number(f[11]) + Number(f[12])) / CLK_TCK, rss: kb("VmRSS"), hwm: kb("VmHWM") };
  } catch {
    return undefined;
  }
}

/** The process and every descendant alive now, by pid (a node's pipeline worker processes). */
export function processTree(root: number): number[] {
  const children = new Map<number, number[]>();
  for (const e of readdirSync("/proc")) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const stat = readFileSync(`/proc/${e}/stat`, "utf8");
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      const list = children.get(ppid) ?? [];
      list.push(Number(e));
      children.set(ppid, list);
    } catch {} // exited while listed
  }
  const out: number[] = [];
  const walk = (pid: number) => {
    out.push(pid);
    for (const c of children.get(pid) ?? []) walk(c);
  };
  walk(root);
  return out;
}

/** label → pid, for the processes a component has now. */
export type Members = () => Map<string, number>;

/** A node: its own process as "node", each descendant as "child <pid>". */
export const nodeMembers =
  (pid: () => number | undefined): Members =>
  () => {
    const root = pid();
    const m = new Map<string, number>();
    if (root === undefined) return m;
    for (const p of processTree(root)) m.set(p === root ? "node" : `child ${p}`, p);
    return m;
  };

type Samples = Map<string, { pid: number; s: ProcSample }>;

export class Component {
  #start: Samples = new Map();
  #idle0: Samples = new Map();
  idleCores = 0;
  cpu = 0;
  /** Highest sampled VmRSS summed over the processes during the window, and the VmHWM sum at its end. */
  peakRss = 0;
  hwm = 0;
  /** CPU-seconds in the window by member label (a member born in the window counts from its start). */
  perMember: Record<string, number> = {};
  /** Members that were there at the start and gone at the end: their CPU is lost to the figure. */
  lost: string[] = [];
  constructor(
    readonly name: string,
    readonly what: string,
    readonly members: Members,
  ) {}
  #all(): Samples {
    const out: Samples = new Map();
    for (const [label, pid] of this.members()) {
      const s = sample(pid);
      if (s) out.set(label, { pid, s });
    }
    return out;
  }
  #delta(from: Samples, now: Samples): Record<string, number> {
    const d: Record<string, number> = {};
    for (const [label, x] of now) {
      const before = from.get(label);
      d[label] = x.s.cpu - (before && before.pid === x.pid ? before.s.cpu : 0);
    }
    return d;
  }
  idleStart() {
    this.#idle0 = this.#all();
  }
  idleEnd(seconds: number) {
    this.idleCores = Object.values(this.#delta(this.#idle0, this.#all())).reduce((a, x) => a + x, 0) / seconds;
  }
  begin() {
    this.#start = this.#all();
    this.peakRss = sum(this.#start, (x) => x.rss);
  }
  poll() {
    this.peakRss = Math.max(
      this.peakRss,
      sum(this.#all(), (x) => x.rss),
    );
  }
  end() {
    const now = this.#all();
    this.perMember = this.#delta(this.#start, now);
    this.lost = [...this.#start.keys()].filter((l) => now.get(l)?.pid !== this.#start.get(l)!.pid);
    this.cpu = Object.values(this.perMember).reduce((a, x) => a + x, 0);
    this.hwm = sum(now, (x) => x.hwm);
    this.poll();
  }
}

const sum = (m: Samples, f: (s: ProcSample) => number) => [...m.values()].reduce((a, x) => a + f(x.s), 0);
