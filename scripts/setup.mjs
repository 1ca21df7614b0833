#!/usr/bin/env node
// One-time set-up shared by `npm start` and `npm test`, runnable with Node alone on a fresh
// Debian machine: npm dependencies, then Debian's nats-server and clickhouse-server when missing.
import { execSync, spawnSync } from "node:child_process";
import { existsSync, statSync } from "node:fs";

const run = (cmd) => {
  console.error(`setup: ${cmd}`);
  execSync(cmd, { stdio: "inherit", env: { ...process.env, DEBIAN_FRONTEND: "noninteractive" } });
};
const onPath = (bin) => spawnSync("sh", ["-c", `command -v ${bin}`], { stdio: "ignore" }).status === 0;

const lock = "package-lock.json";
const marker = "node_modules/.package-lock.json";
// Stale when the lock or package.json changed since the last install (a pull that adds a dependency).
const newer = (f) => existsSync(f) && statSync(f).mtimeMs > statSync(marker).mtimeMs;
if (!existsSync(marker) || !existsSync("node_modules/.bin/bun") || newer(lock) || newer("package.json")) {
  // `npm ci` installs exactly the committed lock. npm 11 judges a lock out of sync when a
  // dependency names optional platform packages the registry does not have (chdb's darwin builds
  // on some mirrors); only then `npm install`, which resolves the same versions and leaves the
  // committed lock unchanged (`.ci/run` fails if it does not).
  console.error("setup: npm ci --no-audit --no-fund");
  const ci = spawnSync("npm", ["ci", "--no-audit", "--no-fund"], {
    stdio: ["ignore", "inherit", "pipe"],
    encoding: "utf8",
  });
  if (ci.status !== 0) {
    const lines = (ci.stderr ?? "").split("\n");
    const why =
      lines.find((l) => l.includes("Missing:")) ??
      lines.find((l) => l.startsWith("npm error") && l.length > 12) ??
      `exit ${ci.status}`;
    console.error(`setup: npm ci refused the lock (${why.replace(/^npm error\s*/, "").trim()}); npm install instead`);
    run("npm install --no-audit --no-fund");
  }
}

// Only needed when we manage the services ourselves.
const wanted = [];
if (!process.env.NATS_URL || process.env.npm_lifecycle_event === "pretest")
  if (!onPath("nats-server")) wanted.push("nats-server");
if (!process.env.CLICKHOUSE_URL || process.env.npm_lifecycle_event === "pretest")
  if (!onPath("clickhouse-server")) wanted.push("clickhouse-server");
// JavaScript and Python transforms run in a sandbox process in its own mount and network namespaces
// (src/pipeline/transform/sandbox-isolation.ts); bubblewrap makes them. Without it the node still
// runs and says at start-up which layers are missing.
if (process.platform === "linux" && process.getuid?.() === 0 && !onPath("bwrap")) wanted.push("bubblewrap");
// The Event debugger's browser test drives Debian's chromium through playwright-core.
if (process.env.npm_lifecycle_event === "pretest" && !existsSync("/usr/bin/chromium")) wanted.push("chromium");
// `test:cluster` runs its own servers whatever the environment says, and Debian's zookeeper (with Java).
if (process.env.npm_lifecycle_event === "test:cluster") {
  for (const bin of ["nats-server", "clickhouse-server"]) if (!wanted.includes(bin) && !onPath(bin)) wanted.push(bin);
  if (!existsSync("/usr/share/java/zookeeper.jar") || !onPath("java")) wanted.push("zookeeper");
}
if (wanted.length) {
  if (process.getuid?.() !== 0) {
    console.error(
      `setup: ${wanted.join(" and ")} not found; install Debian's packages: sudo apt-get install -y ${wanted.join(" ")}`,
    );
    process.exit(1);
  }
  run("apt-get update -qq");
  run(`apt-get install -y -qq ${wanted.join(" ")}`);
}
