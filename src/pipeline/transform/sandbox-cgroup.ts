/**
 * A memory cgroup per sandbox process: the cap that counts what the process really holds, WASM
 * heap or not. An address-space rlimit cannot do that job alone under Bun: JavaScriptCore reserves
 * gigabytes of address space it never touches (and adapts to a lower limit), so the rlimit is kept
 * as a backstop and this is the cap. Past it, the kernel's OOM killer ends the process, and the node
 * fails the event in progress and starts a fresh sandbox.
 *
 * Works with cgroup v1 (a writable memory hierarchy) and with v2 where the node's cgroup may have
 * children with the memory controller; anything else is reported at start-up as missing.
 */
import { existsSync, mkdirSync, readFileSync, readdirSync, rmdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";

interface Hierarchy {
  version: 1 | 2;
  dir: string;
}

let found: Hierarchy | null | undefined;
let counter = 0;
const prefix = `tributary-sandbox-${process.pid}-`;

function locate(): Hierarchy | null {
  if (found !== undefined) return found;
  found = null;
  let lines: string[];
  try {
    lines = readFileSync("/proc/self/cgroup", "utf8").trim().split("\n");
  } catch {
    return found;
  }
  const v1 = lines.map((l) => l.split(":")).find((f) => f[1]?.split(",").includes("memory"));
  const candidates: Hierarchy[] = [];
  if (v1) candidates.push({ version: 1, dir: join("/sys/fs/cgroup/memory", v1.slice(2).join(":")) });
  const v2 = lines.find((l) => l.startsWith("0::"));
  if (v2) {
    for (const mount of ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]) {
      if (existsSync(join(mount, "cgroup.controllers"))) candidates.push({ version: 2, dir: join(mount, v2.slice(3)) });
    }
  }
  for (const c of candidates) {
    if (usable(c)) {
      found = c;
      break;
    }
  }
  if (found) sweepStale(found);
  return found;
}

/** Whether a child cgroup with a memory limit can be made here (tried, then removed). */
function usable(h: Hierarchy): boolean {
  const probe = join(h.dir, `${prefix}probe`);
  try {
    mkdirSync(probe);
  } catch {
    return false;
  }
  try {
    if (h.version === 2) {
      // v2 puts limits on children only where the parent delegates the controller.
      const controllers = readFileSync(join(h.dir, "cgroup.subtree_control"), "utf8");
      if (!controllers.split(/\s+/).includes("memory")) writeFileSync(join(h.dir, "cgroup.subtree_control"), "+memory");
      writeFileSync(join(probe, "memory.max"), String(64 * 1024 * 1024));
    } else writeFileSync(join(probe, "memory.limit_in_bytes"), String(64 * 1024 * 1024));
    return true;
  } catch {
    return false;
  } finally {
    try {
      rmdirSync(probe);
    } catch {
      /* gone already */
    }
  }
}

/** Groups left by a node that died: empty ones can go. */
function sweepStale(h: Hierarchy) {
  try {
    for (const name of readdirSync(h.dir)) {
      const m = /^tributary-sandbox-(\d+)-/.exec(name);
      if (!m || Number(m[1]) === process.pid || existsSync(`/proc/${m[1]}`)) continue;
      try {
        rmdirSync(join(h.dir, name));
      } catch {
        /* still has a process in it */
      }
    }
  } catch {
    /* unreadable: nothing to sweep */
  }
}

export interface MemoryGroup {
  /** The file a process writes its pid into to join the group. */
  procsFile: string;
  /** Remove the group once its process has exited. */
  remove(): void;
}

/** Why no memory cgroup is used, or undefined when one is. */
export function memoryCgroupMissing(): string | undefined {
  return locate() ? undefined : "no memory cgroup (none writable here): memory is capped by address space only";
}

export function memoryCgroupVersion(): 1 | 2 | undefined {
  return locate()?.version;
}

/** A fresh group capped at `bytes` (swap included where the kernel counts it), or undefined. */
export function createMemoryGroup(bytes: number): MemoryGroup | undefined {
  const h = locate();
  if (!h) return undefined;
  const dir = join(h.dir, `${prefix}${++counter}`);
  try {
    mkdirSync(dir);
    if (h.version === 2) {
      writeFileSync(join(dir, "memory.max"), String(bytes));
      if (existsSync(join(dir, "memory.swap.max"))) writeFileSync(join(dir, "memory.swap.max"), "0");
    } else {
      writeFileSync(join(dir, "memory.limit_in_bytes"), String(bytes));
      if (existsSync(join(dir, "memory.memsw.limit_in_bytes")))
        writeFileSync(join(dir, "memory.memsw.limit_in_bytes"), String(bytes));
    }
  } catch {
    try {
      rmdirSync(dir);
    } catch {
      /* never made */
    }
    return undefined;
  }
  return {
    procsFile: join(dir, "cgroup.procs"),
    remove() {
      // The kernel empties the group a moment after the last process is reaped.
      const attempt = (left: number) => {
        try {
          rmdirSync(dir);
        } catch {
          if (left > 0) setTimeout(() => attempt(left - 1), 200).unref?.();
        }
      };
      attempt(25);
    },
  };
}
