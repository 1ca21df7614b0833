/**
 * Which answers are worth sending again, and when. 408, 429 and 5xx are the receiver saying "not
 * now"; any other non-2xx is about the request itself, which another try cannot change.
 */
export function retryableStatus(status: number): boolean {
  return status === 408 || status === 429 || status >= 500;
}

/**
 * Capped exponential backoff with full jitter (AWS's "full jitter"): a uniform wait in
 * [base/2, base] where base = initial · 2^attempt, capped. Half the base is kept so a receiver that
 * is down is not hammered by waits near zero, and the rest is spread so senders do not synchronise.
 */
export function backoffMs(
  attempt: number,
  initialMs: number,
  maxMs: number,
  random: () => number = Math.random,
): number {
  const base = Math.min(maxMs, initialMs * 2 ** Math.min(attempt, 30));
  return Math.round(base / 2 + (random() * base) / 2);
}

/**
 * `Retry-After` as milliseconds from now: delta-seconds or an HTTP date (RFC 9110 §10.2.3),
 * capped at `capMs`; undefined when absent or unreadable (then the backoff applies).
 */
export function retryAfterMs(
  header: string | null | undefined,
  capMs: number,
  now: number = Date.now(),
): number | undefined {
  if (!header) return undefined;
  const v = header.trim();
  let ms: number;
  if (/^\d+$/.test(v)) ms = Number(v) * 1000;
  else {
    const at = Date.parse(v);
    if (Number.isNaN(at)) return undefined;
    ms = at - now;
  }
  return Math.max(0, Math.min(capMs, ms));
}
