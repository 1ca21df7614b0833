/**
 * The layer beneath the interpreters: how a sandbox process is started, and what the operating
 * system takes away from it. The in-process guards (QuickJS, Pyodide's lockdown) are the first
 * layer; this one must hold when they do not, so it assumes the guest runs arbitrary code as the
 * process it is in.
 *
 *  - an empty environment: no write keys, tokens or secrets to read;
 *  - an empty temporary working directory, and no file descriptors but stdin/stdout (the channel)
 *    and stderr;
 *  - rlimits: address space (so memory outside the WASM heap is capped too), CPU seconds, open
 *    files, and a file size of 0 (it writes none);
 *  - with bubblewrap: new mount, network, PID, IPC and UTS namespaces. The root is an empty tmpfs
 *    holding read-only binds of /usr (libc), the Bun binary, the project's `src/` and
 *    `node_modules/`, and nothing else: no /etc, no pipelines, no data directory, a private /tmp,
 *    /dev/shm and /proc, and no network but a loopback that is down;
 *  - when the node runs as root, the uid/gid drop to an unprivileged id with no capabilities and
 *    no_new_privs (setpriv, after bubblewrap has mounted, so a clone under a 0700 /root still works).
 *
 * What is missing is said once at start-up (`describeIsolation`), never silently skipped.
 */
import { spawnSync } from "node:child_process";
import { existsSync, lstatSync, mkdtempSync, realpathSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { memoryCgroupMissing, memoryCgroupVersion } from "./sandbox-cgroup.ts";
import { parseSandboxEnvironment, sandboxDefaults } from "../../config/env.ts";
import type { TransformLimits } from "./types.ts";

export interface SandboxProcessOptions {
  /** Per call of transform(event). */
  limits: TransformLimits;
  /** CPU seconds one sandbox process may use; it is replaced (between batches) before that. */
  cpuSeconds: number;
  /** Open files per sandbox process. */
  maxOpenFiles: number;
  /** uid/gid the sandbox runs as when the node is root. */
  uid: number;
  gid: number;
  /**
   * Test only (TRIBUTARY_SANDBOX_TEST_UNGUARDED=1): JavaScript transforms run as plain Bun code with
   * the host's `fs`, `net` and `process` in reach, to prove this layer holds on its own.
   */
  unguardedForTests: boolean;
}

/** From src/config/env.ts, the one place defaults live. */
export function defaultSandboxOptions(): SandboxProcessOptions {
  return {
    limits: { ...sandboxDefaults.limits },
    cpuSeconds: sandboxDefaults.cpuSeconds,
    maxOpenFiles: 64,
    uid: sandboxDefaults.uid,
    gid: sandboxDefaults.gid,
    unguardedForTests: false,
  };
}

/** Options from the environment, validated as the node's are (errors name the variable). */
export function parseSandboxOptions(env: Record<string, string | undefined> = process.env): SandboxProcessOptions {
  const v = parseSandboxEnvironment(env);
  return {
    limits: { timeoutMs: v.TRIBUTARY_TRANSFORM_TIMEOUT_MS, memoryBytes: v.TRIBUTARY_TRANSFORM_MEMORY_MB * 1048576 },
    cpuSeconds: v.TRIBUTARY_SANDBOX_CPU_SECONDS,
    maxOpenFiles: 64,
    uid: v.TRIBUTARY_SANDBOX_UID,
    gid: v.TRIBUTARY_SANDBOX_GID,
    unguardedForTests: env.TRIBUTARY_SANDBOX_TEST_UNGUARDED === "1",
  };
}

/**
 * Address space of a sandbox process, the backstop under the memory cgroup. JavaScriptCore reserves
 * ~15 GiB it never touches when it may, and adapts when it may not: with 4 GiB a Pyodide sandbox
 * peaks at 3.2 GiB of address space (265 MiB resident). Below ~3 GiB its Worker does not start.
 */
export const processAddressSpace = (l: TransformLimits) => 4 * 1024 ** 3 + 2 * l.memoryBytes;

/**
 * Memory one sandbox process may hold (its memory cgroup): the runtime (measured resident: 112 MiB
 * with QuickJS, 265–320 MiB with a booted Pyodide), the guest's heap, and room for a batch's copies
 * and a restarted interpreter while the old one is collected.
 */
export const processMemoryBytes = (l: TransformLimits) => 512 * 1024 * 1024 + 4 * l.memoryBytes;

export interface IsolationLayers {
  process: true;
  emptyEnvironment: true;
  rlimits: boolean;
  /** "cgroup v1" / "cgroup v2" (resident memory), else "address space". */
  memoryCap: string;
  namespaces: string[];
  uid: number | undefined;
  /** Why a layer is missing, for the start-up log. */
  missing: string[];
}

export interface SandboxCommand {
  cmd: string[];
  cwd: string;
  env: Record<string, string>;
  layers: IsolationLayers;
}

const root = resolve(import.meta.dir, "../../..");
const childScript = "src/pipeline/transform/sandbox-child.ts";
/** Absolute path of a program (the sandbox starts with no PATH), or undefined. */
const which = (bin: string): string | undefined => {
  const r = spawnSync("sh", ["-c", `command -v ${bin}`], { encoding: "utf8" });
  const path = r.status === 0 ? r.stdout.trim() : "";
  return path.startsWith("/") ? path : undefined;
};

let probed: { bwrap?: string; setpriv?: string; prlimit?: string; root: boolean } | undefined;
function probe() {
  if (probed) return probed;
  const isRoot = process.getuid?.() === 0;
  let bwrap = which("bwrap");
  if (bwrap) {
    // A kernel or container may refuse namespaces: try once, with the flags we will use.
    const r = spawnSync(bwrap, [...namespaceFlags(), "--ro-bind", "/", "/", "--", "true"], {
      stdio: "ignore",
      timeout: 10_000,
    });
    if (r.status !== 0) bwrap = undefined;
  }
  probed = { bwrap, setpriv: isRoot ? which("setpriv") : undefined, prlimit: which("prlimit"), root: isRoot };
  return probed;
}

const namespaceFlags = () => [
  "--unshare-ipc",
  "--unshare-pid",
  "--unshare-net",
  "--unshare-uts",
  "--unshare-cgroup-try",
  "--die-with-parent",
  "--new-session",
];

/**
 * The argv that starts one sandbox process, and the layers it gets. With `memoryGroup` (a
 * cgroup.procs file) the process joins that group before anything of the sandbox runs.
 */
export function sandboxCommand(o: SandboxProcessOptions, memoryGroup?: string): SandboxCommand {
  const p = probe();
  const join1 = memoryGroup ? ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', memoryGroup] : [];
  const cg = memoryCgroupVersion();
  const memoryCap = memoryGroup && cg ? `cgroup v${cg}` : "address space";
  const bun = realpathSync(process.execPath);
  const missing: string[] = [];
  const cgMissing = memoryCgroupMissing();
  if (cgMissing) missing.push(cgMissing);
  const limits = [
    `--as=${processAddressSpace(o.limits)}`,
    `--cpu=${Math.ceil(o.cpuSeconds)}:${Math.ceil(o.cpuSeconds) + 30}`,
    `--nofile=${o.maxOpenFiles}`,
    "--fsize=0",
    "--core=0",
  ];
  const env: Record<string, string> = {};
  const drop = p.setpriv
    ? [
        p.setpriv,
        `--reuid=${o.uid}`,
        `--regid=${o.gid}`,
        "--clear-groups",
        "--no-new-privs",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--",
      ]
    : [];
  if (p.root && !p.setpriv) missing.push("uid not dropped: setpriv (util-linux) not found");
  const rlimit = p.prlimit ? [p.prlimit, ...limits, "--"] : [];
  if (!p.prlimit) missing.push("no rlimits: prlimit (util-linux) not found");

  if (p.bwrap) {
    const usrMerged = (dir: string) => {
      try {
        return lstatSync(dir).isSymbolicLink();
      } catch {
        return undefined;
      }
    };
    const cmd = [...join1, p.bwrap, ...namespaceFlags(), "--clearenv", "--ro-bind", "/usr", "/usr"];
    for (const dir of ["/bin", "/sbin", "/lib", "/lib64", "/lib32"]) {
      const link = usrMerged(dir);
      if (link === true) cmd.push("--symlink", `usr${dir}`, dir);
      else if (link === false) cmd.push("--ro-bind", dir, dir);
    }
    cmd.push(
      "--proc",
      "/proc",
      "--dev",
      "/dev",
      "--perms",
      "0755",
      "--tmpfs",
      "/dev/shm",
      "--perms",
      "0755",
      "--tmpfs",
      "/tmp",
      "--perms",
      "01777",
      "--dir",
      "/tmp/work",
      "--chdir",
      "/tmp/work",
      "--perms",
      "0755",
      "--dir",
      "/app",
      "--ro-bind",
      bun,
      "/app/bun",
      "--ro-bind",
      join(root, "src"),
      "/app/src",
      "--ro-bind",
      join(root, "node_modules"),
      "/app/node_modules",
      "--ro-bind",
      join(root, "package.json"),
      "/app/package.json",
    );
    if (existsSync(join(root, "tsconfig.json")))
      cmd.push("--ro-bind", join(root, "tsconfig.json"), "/app/tsconfig.json");
    cmd.push("--", ...drop, ...rlimit, "/app/bun", `/app/${childScript}`);
    return {
      cmd,
      cwd: "/",
      env,
      layers: {
        process: true,
        emptyEnvironment: true,
        rlimits: !!p.prlimit,
        memoryCap,
        namespaces: ["mount", "network", "pid", "ipc", "uts"],
        uid: p.setpriv ? o.uid : p.root ? 0 : process.getuid?.(),
        missing,
      },
    };
  }
  missing.push(
    p.root
      ? "no mount/network namespace: bubblewrap (bwrap) is missing or the kernel refused it; /tmp and the network stay reachable"
      : "no mount/network namespace: the node is not root and bubblewrap is missing or refused",
  );
  // Without a mount namespace an unprivileged uid may not be able to read the code (a clone under
  // /root), so the process keeps the node's user, and the log says so.
  if (p.root) missing.push("uid not dropped: it needs the mount namespace to reach the code");
  const cwd = mkdtempSync(join(tmpdir(), "tributary-sandbox-"));
  return {
    cmd: [...join1, ...rlimit, bun, join(root, childScript)],
    cwd,
    env,
    layers: {
      process: true,
      emptyEnvironment: true,
      rlimits: !!p.prlimit,
      memoryCap,
      namespaces: [],
      uid: process.getuid?.(),
      missing,
    },
  };
}

/** One line for the start-up log: what holds a guest that got past its interpreter. */
export function describeIsolation(o: SandboxProcessOptions): IsolationLayers & { unguardedForTests: boolean } {
  const layers = sandboxCommand(o, memoryCgroupVersion() ? "(a memory group)" : undefined).layers;
  return { ...layers, unguardedForTests: o.unguardedForTests };
}
