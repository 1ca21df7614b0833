// `npm run bench:soak -- [--minutes M] [--rate EVENTS_PER_S] [--batch N] [--dedup-hours H] [--out docs/soak.svg]`
//
// A soak: one node (its own process) with an `import: events` pipeline into ClickHouse, under a
// steady open-loop load (requests start on a fixed schedule whatever the answers, so a slow
// node shows up as latency, not as a slower sender). Every 5 s it samples the node's RSS (VmRSS
// from /proc/<pid>/status) and the latency of the requests answered in that interval (from their
// scheduled start), prints a table, draws docs/soak.svg and says whether memory and latency
// stayed flat: the second half of the run (after warm-up) against the first.
//
// The dedup index grows by design for one dedup window (~20–40 bytes per event: with the default
// 24 h at 5,000 events/s that is several GB after a day), so a soak of minutes can only show a
// flat line if the window is shorter than the run: by default it is 2 minutes here
// (TRIBUTARY_DEDUP_WINDOW_HOURS), and warm-up covers it. `--dedup-hours 24` soaks the default.
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { startClickHouse, startNats, tempDir } from "../test/harness/services.ts";
import { ChaosNode, rssOf } from "../test/harness/chaos-node.ts";
import { chClient } from "../test/harness/warehouse.ts";
import { fixtureEvents } from "./loadgen.ts";
import { parseCommand, usageError } from "../scripts/cli.ts";

const spec = {
  name: "bench:soak",
  usage: `usage: npm run bench:soak -- [--minutes M] [--rate EVENTS_PER_S] [--batch N] [--interval S] [--dedup-hours H] [--out FILE]

A soak: one node with an import: events pipeline into ClickHouse (its own services) under a
steady open-loop load; samples the node's RSS and latency, prints a table, draws the SVG and says
whether memory and latency stayed flat (second half of the run against the first).

      --minutes M          length of the run (10)
      --rate EVENTS_PER_S  events per second (5000)
      --batch N            events per request (50)
      --interval S         seconds between samples (5)
      --dedup-hours H      the dedup window (2 minutes, so a short soak can be flat; 24 soaks the default)
      --out FILE           the chart (docs/soak.svg)
  -h, --help               this help`,
  options: {
    minutes: { type: "string", default: "10" },
    rate: { type: "string", default: "5000" },
    batch: { type: "string", default: "50" },
    interval: { type: "string", default: "5" },
    "dedup-hours": { type: "string", default: String(2 / 60) },
    out: { type: "string", default: join(import.meta.dir, "../docs/soak.svg") },
  },
} as const;
const { values } = parseCommand(spec);
const minutes = Number(values.minutes);
const rate = Number(values.rate);
const batch = Number(values.batch);
const intervalS = Number(values.interval);
const dedupHours = Number(values["dedup-hours"]);
const out = resolve(values.out!);
if (![minutes, rate, batch, intervalS, dedupHours].every((v) => Number.isFinite(v) && v > 0))
  usageError(spec, "every number must be positive");
process.on("SIGINT", () => process.exit(130));

const WRITE_KEY = "key-soak-0000001";
const requestsPerSecond = rate / batch;
const MAX_OUTSTANDING = 512;

interface Sample {
  t: number; // s since the load started
  /** Mean and highest of the per-second readings in the window. */
  rssMiB: number;
  rssMaxMiB: number;
  natsMiB: number;
  clickhouseMiB: number;
  requests: number;
  ok: number;
  refused: number;
  failed: number;
  p50: number;
  p99: number;
  max: number;
  /** Accepted events not yet in ClickHouse at the sample. */
  lag: number;
  /** CPU used in the window by the node, and by everything on the machine that is not this soak (cores). */
  nodeCores: number;
  otherCores: number;
}

/** Busy CPU ticks of the machine, and of the given processes (utime + stime). */
function cpuTicks(pids: (number | undefined)[]): { machine: number; ours: number[] } {
  const cpu = readFileSync("/proc/stat", "utf8").split("\n")[0]!.trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal: everything but idle and iowait is busy.
  const machine = cpu[0]! + cpu[1]! + cpu[2]! + cpu[5]! + cpu[6]! + (cpu[7] ?? 0);
  const ours = pids.map((pid) => {
    if (!pid) return 0;
    try {
      const f = readFileSync(`/proc/${pid}/stat`, "utf8");
      const rest = f.slice(f.lastIndexOf(")") + 2).split(" ");
      return Number(rest[11]) + Number(rest[12]);
    } catch {
      return 0;
    }
  });
  return { machine, ours };
}
const TICKS_PER_S = 100;

const fmtWindow = (h: number) => (h >= 1 ? `${+h.toFixed(2)} h` : `${+(h * 60).toFixed(1)} min`);
const quantile = (sorted: number[], q: number) =>
  sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]! : NaN;

async function main() {
  const [nats, ch] = await Promise.all([startNats(), startClickHouse()]);
  const work = tempDir("soak");
  mkdirSync(join(work, "pipelines"));
  writeFileSync(
    join(work, "pipelines/soak.yaml"),
    `connection: soak\nsource: webhook\nwriteKeys: ["${WRITE_KEY}"]\npipelines:\n  - name: all\n    import: events\n`,
  );
  const node = new ChaosNode(
    "node",
    {
      NATS_URL: nats.url,
      CLICKHOUSE_URL: ch.url,
      TRIBUTARY_PIPELINES: join(work, "pipelines"),
      TRIBUTARY_DEDUP_WINDOW_HOURS: String(dedupHours),
    },
    join(work, "node.log"),
  );
  const db = chClient(ch.url);
  try {
    await node.start();
    await node.ready(60_000);
    const fixtures = fixtureEvents(join(import.meta.dir, "../test/fixtures"));
    console.error(
      `soak: ${minutes} min at ${rate.toLocaleString("en-US")} events/s (${requestsPerSecond} requests/s of ${batch} events, open loop), dedup window ${fmtWindow(dedupHours)}; node pid ${node.pid}, logs in ${work}`,
    );

    // The load: request k starts at t0 + k / requestsPerSecond.
    const t0 = performance.now();
    const endAt = t0 + minutes * 60_000;
    let outstanding = 0;
    let skipped = 0;
    let accepted = 0;
    let seq = 0;
    let window: { ms: number; status: number }[] = [];
    const inFlight = new Set<Promise<void>>();
    const send = (scheduled: number) => {
      const ids = Array.from({ length: batch }, (_, i) => ({
        ...fixtures[(seq + i) % fixtures.length],
        messageId: `soak-${seq + i}`,
      }));
      seq += batch;
      const body = JSON.stringify(ids);
      outstanding++;
      const p = fetch(`${node.url}/v1/events`, {
        method: "POST",
        headers: { Authorization: `Bearer ${WRITE_KEY}`, "Content-Type": "application/json" },
        body,
        signal: AbortSignal.timeout(30_000),
      })
        .then(async (r) => {
          await r.arrayBuffer();
          if (r.status === 200) accepted += batch;
          window.push({ ms: performance.now() - scheduled, status: r.status });
        })
        .catch(() => void window.push({ ms: performance.now() - scheduled, status: 0 }))
        .finally(() => {
          outstanding--;
          inFlight.delete(p);
        });
      inFlight.add(p);
    };
    const loader = (async () => {
      for (let k = 0; ; k++) {
        const due = t0 + (k * 1000) / requestsPerSecond;
        if (due >= endAt) break;
        const wait = due - performance.now();
        if (wait > 1) await Bun.sleep(wait);
        if (outstanding >= MAX_OUTSTANDING) skipped++;
        else send(due);
      }
    })();

    // RSS is read every second (a single reading lands anywhere in a GC cycle) and averaged per window.
    let rssWindow: number[] = [];
    const rssTimer = setInterval(() => {
      const r = node.rss();
      if (r) rssWindow.push(r / 1048576);
    }, 1000);
    const samples: Sample[] = [];
    const pids = () => [node.pid, nats.pid, ch.pid, process.pid];
    let ticks = cpuTicks(pids());
    let ticksAt = performance.now();
    const mib = (b: number | undefined) => (b ?? 0) / 1048576;
    console.log(
      "| t s | node RSS MiB (mean / max) | NATS MiB | ClickHouse MiB | requests | 2xx | refused | failed | p50 ms | p99 ms | max ms | not yet loaded | node CPU cores | other CPU cores |",
    );
    console.log("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (let i = 1; ; i++) {
      const at = t0 + i * intervalS * 1000;
      if (at > endAt + 1) break;
      await Bun.sleep(Math.max(0, at - performance.now()));
      const w = window;
      window = [];
      const rw = rssWindow.length ? rssWindow : [mib(node.rss())];
      rssWindow = [];
      const ok = w
        .filter((x) => x.status === 200)
        .map((x) => x.ms)
        .sort((a, b) => a - b);
      let loaded = 0;
      try {
        const r = await db.query({
          query: "SELECT count() FROM tributary.events WHERE connection = 'soak'",
          format: "TabSeparated",
        });
        loaded = Number((await r.text()).trim());
      } catch {}
      const nowTicks = cpuTicks(pids());
      const dt = ((performance.now() - ticksAt) / 1000) * TICKS_PER_S;
      const oursDelta = nowTicks.ours.reduce((a, v, k) => a + Math.max(0, v - (ticks.ours[k] ?? 0)), 0);
      const nodeCores = Math.max(0, nowTicks.ours[0]! - ticks.ours[0]!) / dt;
      const otherCores = Math.max(0, nowTicks.machine - ticks.machine - oursDelta) / dt;
      ticks = nowTicks;
      ticksAt = performance.now();
      const s: Sample = {
        t: (performance.now() - t0) / 1000,
        rssMiB: rw.reduce((x, y) => x + y, 0) / rw.length,
        rssMaxMiB: Math.max(...rw),
        natsMiB: mib(rssOf(nats.pid)),
        clickhouseMiB: mib(rssOf(ch.pid)),
        requests: w.length,
        ok: ok.length,
        refused: w.filter((x) => x.status === 429 || x.status === 503).length,
        failed: w.filter((x) => x.status !== 200 && x.status !== 429 && x.status !== 503).length,
        p50: quantile(ok, 0.5),
        p99: quantile(ok, 0.99),
        max: ok.length ? ok[ok.length - 1]! : NaN,
        lag: Math.max(0, accepted - loaded),
        nodeCores,
        otherCores,
      };
      samples.push(s);
      const f = (v: number, d = 1) => (Number.isFinite(v) ? v.toFixed(d) : "–");
      console.log(
        `| ${f(s.t, 0)} | ${f(s.rssMiB)} / ${f(s.rssMaxMiB)} | ${f(s.natsMiB)} | ${f(s.clickhouseMiB)} | ${s.requests} | ${s.ok} | ${s.refused} | ${s.failed} | ${f(s.p50)} | ${f(s.p99)} | ${f(s.max)} | ${s.lag.toLocaleString("en-US")} | ${f(s.nodeCores, 2)} | ${f(s.otherCores, 2)} |`,
      );
    }
    clearInterval(rssTimer);
    await loader;
    await Promise.all(inFlight);

    const verdict = analyse(samples, minutes, dedupHours);
    console.log("");
    for (const line of verdict.lines) console.log(line);
    if (skipped) console.log(`(${skipped} requests not sent: ${MAX_OUTSTANDING} already outstanding)`);
    mkdirSync(dirname(out), { recursive: true });
    writeFileSync(out, chart(samples, verdict, { minutes, rate, batch, dedupHours }));
    console.log(`chart: ${out}`);
  } finally {
    await node.stop().catch(() => {});
    await db.close().catch(() => {});
    await Promise.all([nats.cleanup(), ch.cleanup()]);
  }
}

interface Verdict {
  warmupS: number;
  rss: { first: number; second: number; slopeFirst: number; slopeSecond: number; slopeAll: number; flat: boolean };
  p99: { first: number; second: number; flat: boolean };
  lines: string[];
}

/** Least-squares slope of y over x (per minute when x is in seconds). */
function slopePerMinute(xs: number[], ys: number[]): number {
  const n = xs.length;
  if (n < 2) return 0;
  const mx = xs.reduce((a, b) => a + b, 0) / n;
  const my = ys.reduce((a, b) => a + b, 0) / n;
  let num = 0;
  let den = 0;
  for (let i = 0; i < n; i++) {
    num += (xs[i]! - mx) * (ys[i]! - my);
    den += (xs[i]! - mx) ** 2;
  }
  return den ? (num / den) * 60 : 0;
}

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);
const median = (xs: number[]) => {
  const s = xs.filter(Number.isFinite).sort((a, b) => a - b);
  return s.length ? s[Math.floor(s.length / 2)]! : NaN;
};

/**
 * Flat means: after warm-up (a minute, or the dedup window and a quarter if longer), the second
 * half's mean RSS is within 10 % of the first half's, the trend over the whole steady part is
 * under 1 % of it per minute, and the median of the 5-second p99s in the second half is at most
 * 1.5 × the first half's.
 */
function analyse(samples: Sample[], minutes: number, dedupHours: number): Verdict {
  // Past the first minute and past the dedup index's growth (one window and a quarter), but
  // never more than half the run.
  const warmupS = Math.round(Math.min(Math.max(60, 1.25 * dedupHours * 3600 + 30), minutes * 30));
  const steady = samples.filter((s) => s.t > warmupS);
  const mid = Math.floor(steady.length / 2);
  const [a, b] = [steady.slice(0, mid), steady.slice(mid)];
  const rss = {
    first: mean(a.map((s) => s.rssMiB)),
    second: mean(b.map((s) => s.rssMiB)),
    slopeFirst: slopePerMinute(
      a.map((s) => s.t),
      a.map((s) => s.rssMiB),
    ),
    slopeSecond: slopePerMinute(
      b.map((s) => s.t),
      b.map((s) => s.rssMiB),
    ),
    slopeAll: slopePerMinute(
      steady.map((s) => s.t),
      steady.map((s) => s.rssMiB),
    ),
    flat: false,
  };
  rss.flat = Math.abs(rss.second - rss.first) <= 0.1 * rss.first && rss.slopeAll <= 0.01 * rss.first;
  const p99 = { first: median(a.map((s) => s.p99)), second: median(b.map((s) => s.p99)), flat: false };
  p99.flat = p99.second <= 1.5 * p99.first;
  const all = samples.map((s) => s.requests).reduce((x, y) => x + y, 0);
  const ok = samples.map((s) => s.ok).reduce((x, y) => x + y, 0);
  const lines = [
    `| after ${warmupS} s warm-up | first half | second half | flat? |`,
    "| --- | ---: | ---: | --- |",
    `| node RSS, mean MiB | ${rss.first.toFixed(1)} | ${rss.second.toFixed(1)} | ${rss.flat ? "yes" : "**no**"} |`,
    `| node RSS, slope MiB/min | ${rss.slopeFirst.toFixed(2)} | ${rss.slopeSecond.toFixed(2)} | whole steady part: ${rss.slopeAll.toFixed(2)} MiB/min |`,
    `| p99 latency, median of 5-s windows, ms | ${p99.first.toFixed(1)} | ${p99.second.toFixed(1)} | ${p99.flat ? "yes" : "**no**"} |`,
    "",
    `${all.toLocaleString("en-US")} requests, ${ok.toLocaleString("en-US")} answered 200; highest RSS reading ${Math.max(...samples.map((s) => s.rssMaxMiB)).toFixed(1)} MiB; ` +
      `highest 5-s p99 ${Math.max(...samples.map((s) => s.p99).filter(Number.isFinite)).toFixed(1)} ms; most events waiting for ClickHouse at a sample: ${Math.max(...samples.map((s) => s.lag)).toLocaleString("en-US")}.`,
  ];
  return { warmupS, rss, p99, lines };
}

/** Two stacked panels (RSS, latency) as a self-contained SVG. */
function chart(
  samples: Sample[],
  v: Verdict,
  o: { minutes: number; rate: number; batch: number; dedupHours: number },
): string {
  const W = 900;
  const H = 860;
  const left = 70;
  const right = 20;
  const panelH = 190;
  const panels = [
    {
      top: 90,
      title: "node RSS (MiB, read every second)",
      series: [
        { name: "max", color: "#9ecae1", values: samples.map((s) => s.rssMaxMiB) },
        { name: "mean", color: "#1f77b4", values: samples.map((s) => s.rssMiB) },
      ],
    },
    {
      top: 355,
      title: "latency per 5-s window (ms, from scheduled start)",
      series: [
        { name: "p99", color: "#d62728", values: samples.map((s) => s.p99) },
        { name: "p50", color: "#2ca02c", values: samples.map((s) => s.p50) },
      ],
    },
    {
      top: 620,
      title:
        "CPU (cores; the machine has " + navigator.hardwareConcurrency + "): the node, and other work on the machine",
      series: [
        { name: "node", color: "#1f77b4", values: samples.map((s) => s.nodeCores) },
        { name: "others", color: "#7f7f7f", values: samples.map((s) => s.otherCores) },
      ],
    },
  ];
  const tMax = Math.max(o.minutes * 60, ...samples.map((s) => s.t));
  const x = (t: number) => left + ((W - left - right) * t) / tMax;
  const esc = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;");
  const parts: string[] = [];
  parts.push(
    `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" font-family="sans-serif" font-size="12">`,
  );
  parts.push(`<rect width="${W}" height="${H}" fill="white"/>`);
  parts.push(
    `<text x="${left}" y="24" font-size="15" font-weight="bold">${esc(`Tributary soak: ${o.minutes} min at ${o.rate.toLocaleString("en-US")} events/s (${o.batch}-event requests, open loop) into ClickHouse, dedup window ${fmtWindow(o.dedupHours)}`)}</text>`,
  );
  parts.push(
    `<text x="${left}" y="44" fill="#444">${esc(
      `RSS ${v.rss.first.toFixed(0)} → ${v.rss.second.toFixed(0)} MiB (halves after ${v.warmupS} s warm-up), trend ${v.rss.slopeAll.toFixed(2)} MiB/min; p99 ${v.p99.first.toFixed(1)} → ${v.p99.second.toFixed(1)} ms`,
    )}</text>`,
  );
  for (const p of panels) {
    const vals = p.series.flatMap((s) => s.values).filter(Number.isFinite);
    const yMax = niceCeil(Math.max(1, ...vals) * 1.1);
    const y = (val: number) => p.top + panelH - (panelH * val) / yMax;
    parts.push(`<text x="${left}" y="${p.top - 8}" font-weight="bold">${esc(p.title)}</text>`);
    for (let i = 0; i <= 4; i++) {
      const val = (yMax * i) / 4;
      parts.push(`<line x1="${left}" x2="${W - right}" y1="${y(val)}" y2="${y(val)}" stroke="#ddd"/>`);
      parts.push(`<text x="${left - 6}" y="${y(val) + 4}" text-anchor="end" fill="#444">${+val.toFixed(1)}</text>`);
    }
    const step = tMax > 1200 ? 300 : tMax > 300 ? 60 : 30;
    for (let t = 0; t <= tMax + 0.1; t += step) {
      parts.push(`<line x1="${x(t)}" x2="${x(t)}" y1="${p.top}" y2="${p.top + panelH}" stroke="#eee"/>`);
      parts.push(
        `<text x="${x(t)}" y="${p.top + panelH + 16}" text-anchor="middle" fill="#444">${t >= 60 ? `${+(t / 60).toFixed(1)} min` : `${t} s`}</text>`,
      );
    }
    parts.push(
      `<rect x="${x(0)}" y="${p.top}" width="${x(v.warmupS) - x(0)}" height="${panelH}" fill="#000" opacity="0.04"/>`,
    );
    parts.push(
      `<rect x="${left}" y="${p.top}" width="${W - left - right}" height="${panelH}" fill="none" stroke="#999"/>`,
    );
    p.series.forEach((s, k) => {
      const pts = samples
        .map((smp, i) => (Number.isFinite(s.values[i]!) ? `${x(smp.t).toFixed(1)},${y(s.values[i]!).toFixed(1)}` : ""))
        .filter(Boolean);
      parts.push(`<polyline fill="none" stroke="${s.color}" stroke-width="1.8" points="${pts.join(" ")}"/>`);
      parts.push(`<rect x="${W - right - 90}" y="${p.top + 8 + k * 16}" width="12" height="3" fill="${s.color}"/>`);
      parts.push(`<text x="${W - right - 72}" y="${p.top + 13 + k * 16}">${esc(s.name)}</text>`);
    });
  }
  parts.push(
    `<text x="${left}" y="${H - 8}" fill="#888">shaded: warm-up (incl. the dedup index filling its window), left out of the flatness check · generated by bench/soak.ts</text>`,
  );
  parts.push("</svg>");
  return parts.join("\n") + "\n";
}

function niceCeil(v: number): number {
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

await main();
process.exit(0);
