import { refusalLogDefaults as envRefusalLogDefaults } from "../config/env.ts";
import { log } from "../util/log.ts";

/**
 * Warn-level log lines for refused requests (a browser origin, a preflight, a webhook signature),
 * rate-limited so that a hostile sender cannot flood the log: at most one line per subject (e.g.
 * connection + origin) per window, and at most `maxLinesPerWindow` lines per window over all
 * subjects (a sender varying its Origin gets no more). What was held back is counted and reported
 * as `suppressed` on the subject's next line, or on the next line at all once the global cap
 * held lines back. Callers pass names, origins and reasons, never a write key or a secret.
 */
export interface RefusalLogOptions {
  windowMs: number;
  maxLinesPerWindow: number;
  /** Subjects remembered at once; beyond it the oldest are forgotten (their suppressed counts go to the global count). */
  maxSubjects: number;
}

/** From config/env.ts, the one place defaults live. */
export const refusalLogDefaults: RefusalLogOptions = envRefusalLogDefaults;

/** Longest value (an origin, a reason) copied into a log line. */
const MAX_FIELD_CHARS = 256;

export class RefusalLog {
  readonly #o: RefusalLogOptions;
  /** subject → when its last line was written and how many were held back since. */
  #subjects = new Map<string, { at: number; suppressed: number }>();
  #windowStart = 0;
  #linesInWindow = 0;
  /** Held back by the global cap (or forgotten subjects): reported on the next line written. */
  #suppressedOverall = 0;

  constructor(
    o: Partial<RefusalLogOptions> = {},
    private readonly now: () => number = Date.now,
  ) {
    this.#o = { ...refusalLogDefaults, ...o };
  }

  /** Writes `msg` at warn level unless `subject` (or the node) had its share of lines this window. True when written. */
  warn(subject: string, msg: string, fields: Record<string, string | number | undefined>): boolean {
    const t = this.now();
    if (t - this.#windowStart >= this.#o.windowMs) {
      this.#windowStart = t;
      this.#linesInWindow = 0;
    }
    const s = this.#subjects.get(subject);
    if (s && t - s.at < this.#o.windowMs) {
      s.suppressed++;
      return false;
    }
    if (this.#linesInWindow >= this.#o.maxLinesPerWindow) {
      this.#suppressedOverall++;
      return false;
    }
    this.#linesInWindow++;
    const suppressed = s?.suppressed ?? 0;
    this.#subjects.delete(subject);
    this.#subjects.set(subject, { at: t, suppressed: 0 });
    if (this.#subjects.size > this.#o.maxSubjects) {
      const [oldest, v] = this.#subjects.entries().next().value!;
      this.#subjects.delete(oldest);
      this.#suppressedOverall += v.suppressed;
    }
    const clipped: Record<string, string | number> = {};
    for (const [k, v] of Object.entries(fields))
      if (v !== undefined)
        clipped[k] = typeof v === "string" && v.length > MAX_FIELD_CHARS ? `${v.slice(0, MAX_FIELD_CHARS)}…` : v;
    const overall = this.#suppressedOverall;
    this.#suppressedOverall = 0;
    log.warn(msg, {
      ...clipped,
      ...(suppressed > 0 && { suppressed, suppressedSince: new Date(s!.at).toISOString() }),
      ...(overall > 0 && { suppressedOtherRefusals: overall }),
    });
    return true;
  }
}
