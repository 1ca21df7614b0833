/**
 * The worker's batch loop for JavaScript transformations (see javascript.ts for the design): a
 * message's events go through the QuickJS sandbox (javascript-sandbox.ts) in chunks; an abort fails
 * the event that was running, the sandbox is rebuilt and the rest goes on. Results known early are
 * reported, so a parent that has to stop a stalled worker keeps them.
 */
import type { QuickJSWASMModule } from "quickjs-emscripten";
import { decodeResultObject, fail, formatBytes, parseResults } from "./host.ts";
import {
  newModule,
  Sandbox,
  type ChunkOutcome,
  type EventsInput,
  type PartialListener,
  type ProgressListener,
} from "./javascript-sandbox.ts";
import type { TransformLimits, TransformResult } from "./types.ts";

/** A batch is cut into chunks so the batch JSON itself takes a small part of the memory limit. */
const chunkMaxEvents = 500;
const chunkMaxBytes = 1024 * 1024;

/** A Sandbox that rebuilds itself (and if need be its WASM module) after aborts. */
export class SandboxHost {
  private sandbox: Sandbox | undefined;
  /** Number of sandbox rebuilds after aborts. */
  rebuilds = 0;
  /** Whether events may come as bjson (else JSON text). */
  binary = false;
  /** Whether progress names each event as it starts (tick by host call) or when noticed (cell mode). */
  exactProgress = true;

  private constructor(
    private mod: QuickJSWASMModule | undefined,
    private readonly source: string,
    private readonly limits: TransformLimits,
  ) {}

  /** Throws TransformLoadError for problems with the user's code. */
  static async create(source: string, limits: TransformLimits): Promise<SandboxHost> {
    const h = new SandboxHost(await newModule(limits), source, limits);
    h.sandbox = new Sandbox(h.mod!, source, limits);
    h.binary = h.sandbox.binary;
    h.exactProgress = !h.sandbox.cellMode;
    return h;
  }

  /**
   * Transform JSON-encoded events; the JSON array of TransformResult, one per event, in order.
   * `progress(i)` is told when event i starts, `progress(-1)` when a phase outside events starts.
   */
  async runBatch(
    input: EventsInput,
    progress: ProgressListener = () => {},
    report: PartialListener = () => {},
  ): Promise<string> {
    const n = input.events.length;
    let pending: number[] = Array.from({ length: n }, (_, i) => i);
    // Fast path: every chunk succeeds, the guest's JSON goes out untouched.
    const parts: string[] = [];
    const results: (TransformResult | undefined)[] = new Array(n);
    let slow = false;
    let oneByOne = false;
    const reportResolved = (chunk: number[]) => {
      if (pending.length === 0) return; // the final answer carries them
      const resolved = chunk.filter((i) => results[i] !== undefined);
      if (resolved.length > 0) report(resolved, JSON.stringify(resolved.map((i) => results[i])));
    };
    while (pending.length > 0) {
      const chunk = takeChunk(pending, input, oneByOne ? 1 : chunkMaxEvents);
      let sandbox: Sandbox;
      try {
        progress(-1);
        sandbox = await this.ensureSandbox();
      } catch (e) {
        for (const i of pending) results[i] = fail(`sandbox could not be rebuilt: ${(e as Error).message}`);
        slow = true;
        break;
      }
      let outcome: ChunkOutcome;
      try {
        outcome = sandbox.runChunk(input, chunk, (k) => progress(k < chunk.length ? chunk[k]! : -1));
      } catch (e) {
        // WASM-level failure (e.g. native stack exhausted, abort): throw away the whole module.
        this.drop(true);
        outcome = {
          ok: false,
          at: sandbox.ticksNow() - 1,
          done: undefined,
          error: `sandbox crashed: ${(e as Error).message}`,
        };
      }
      progress(-1);
      if (outcome.ok) {
        if (!slow && !outcome.json.includes('"error":"InternalError: out of memory')) {
          parts.push(outcome.json.slice(1, -1));
          pending = pending.slice(chunk.length);
          if (pending.length > 0) report(chunk, outcome.json);
          continue;
        } else {
          // An out-of-memory was caught: the runner stopped after that event; rebuild for the rest.
          slow = true;
          const parsed = parseResults(outcome.json, chunk.length, decodeResultObject, true);
          if (!parsed || parsed.length === 0) {
            for (const i of chunk) results[i] = fail("sandbox returned malformed results");
          } else {
            parsed.forEach((res, k) => {
              results[chunk[k]!] =
                !res.ok && res.error === "InternalError: out of memory"
                  ? fail(`transform exceeded the memory limit of ${formatBytes(this.limits.memoryBytes)}`)
                  : res;
            });
          }
          this.drop(false);
        }
        pending = pending.filter((i) => results[i] === undefined);
        reportResolved(chunk);
        continue;
      }
      // Aborted: keep what completed, fail the event that was running, rebuild, go on with the rest.
      this.drop(false);
      slow = true;
      const { at, done } = outcome;
      let resolved = 0;
      if (done) for (; resolved < done.length; resolved++) results[chunk[resolved]!] = done[resolved];
      if (at >= 0 && at < chunk.length) {
        results[chunk[at]!] = fail(outcome.error);
      } else if (resolved === chunk.length) {
        // everything completed; the abort came after the last event
      } else if (chunk.length === 1) {
        results[chunk[0]!] = fail(
          at < 0
            ? `event does not fit in the sandbox: ${outcome.error}`
            : `result does not fit in the sandbox: ${outcome.error}`,
        );
      } else {
        oneByOne = true; // failed outside any one event (the chunk's JSON itself): retry the events one by one
      }
      pending = pending.filter((i) => results[i] === undefined);
      reportResolved(chunk);
    }
    if (!slow) return `[${parts.join(",")}]`;
    // Switched to the slow path midway: the chunks that went fast are still in `parts`, in order.
    if (parts.length > 0) {
      const early = JSON.parse(`[${parts.join(",")}]`) as TransformResult[];
      early.forEach((r, i) => {
        results[i] = r;
      });
    }
    return JSON.stringify(results.map((r) => r ?? fail("internal error: event not processed")));
  }

  private async ensureSandbox(): Promise<Sandbox> {
    if (this.sandbox) return this.sandbox;
    if (!this.mod) this.mod = await newModule(this.limits);
    this.rebuilds++;
    this.sandbox = new Sandbox(this.mod, this.source, this.limits);
    return this.sandbox;
  }

  private drop(dropModule: boolean) {
    const s = this.sandbox;
    this.sandbox = undefined;
    if (s) {
      try {
        s.dispose();
      } catch {
        dropModule = true; // freeing a runtime after a crash can fail: don't reuse that WASM instance
      }
    }
    if (dropModule) this.mod = undefined;
  }

  dispose() {
    this.drop(true);
  }
}

/** Next chunk from the front of `pending`: at most `maxEvents` events and about chunkMaxBytes of JSON. */
function takeChunk(pending: number[], input: EventsInput, maxEvents: number): number[] {
  let bytes = 0;
  let k = 0;
  while (k < pending.length && k < maxEvents) {
    bytes += input.events[pending[k]!]!.length + 1;
    if (k > 0 && bytes > chunkMaxBytes) break;
    k++;
  }
  return pending.slice(0, k);
}
