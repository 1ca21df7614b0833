/**
 * Groups queued items into batches (by count, bytes and age, as Vector's batch settings do) while
 * keeping each key's items in order: a key's items are in at most one batch under way, and its
 * later items wait until that batch is settled. Batches for other keys proceed meanwhile, up to
 * `maxInFlight`, so one slow key holds one slot, not the others.
 */

export interface BatchLimits {
  maxItems: number;
  maxBytes: number;
  maxAgeMs: number;
  maxInFlight: number;
}

export interface Queued<T> {
  key: string;
  bytes: number;
  value: T;
  /** When it was queued (performance.now()). */
  at: number;
}

export class OrderedBatcher<T> {
  /** Per key, its items not yet in a batch, in order. */
  readonly #byKey = new Map<string, Queued<T>[]>();
  /** Keys with items and no batch under way, in the order they became ready. */
  readonly #ready = new Set<string>();
  /** Keys with a batch under way. */
  readonly #busy = new Set<string>();
  #readyItems = 0;
  #readyBytes = 0;
  /** The oldest ready item's time (a lower bound once batches left). */
  #openedAt = Number.POSITIVE_INFINITY;
  #timer?: ReturnType<typeof setTimeout>;
  #inFlight = 0;
  #queued = 0;
  #stopped = false;

  constructor(
    readonly limits: BatchLimits,
    /** Delivers a batch; the batcher waits for it to settle before the batch's keys go on. */
    readonly send: (batch: Queued<T>[]) => Promise<void>,
    /** After a batch settled and its items left the queue. */
    readonly onSettled?: () => void,
  ) {}

  /** Items queued and not yet settled, in batches under way included. */
  get size(): number {
    return this.#queued;
  }

  get inFlight(): number {
    return this.#inFlight;
  }

  /** Queues items in order; batches are cut after all of them are in (one stream message's events go together). */
  push(items: { key: string; bytes: number; value: T }[]): void {
    const at = performance.now();
    for (const { key, bytes, value } of items) {
      const item: Queued<T> = { key, bytes, value, at };
      let list = this.#byKey.get(key);
      if (!list) this.#byKey.set(key, (list = []));
      list.push(item);
      this.#queued++;
      if (!this.#busy.has(key)) this.#markReady(key, [item], false);
    }
    this.#pump(false);
  }

  /** Sends what is ready now, whatever its age (the end of a replay). */
  flush(): void {
    this.#pump(true);
  }

  /** No more batches; what is queued stays (the caller fails it). Returns what was queued. */
  stop(): Queued<T>[] {
    this.#stopped = true;
    clearTimeout(this.#timer);
    const left = [...this.#byKey.values()].flat();
    this.#byKey.clear();
    this.#ready.clear();
    return left;
  }

  #markReady(key: string, items: Queued<T>[], pump = true): void {
    this.#ready.add(key);
    for (const i of items) {
      this.#readyItems++;
      this.#readyBytes += i.bytes;
      if (i.at < this.#openedAt) this.#openedAt = i.at;
    }
    if (pump) this.#pump(false);
  }

  #pump(force: boolean): void {
    while (!this.#stopped && this.#inFlight < this.limits.maxInFlight && this.#readyItems > 0) {
      const full = this.#readyItems >= this.limits.maxItems || this.#readyBytes >= this.limits.maxBytes;
      const age = performance.now() - this.#openedAt;
      if (!full && !force && age < this.limits.maxAgeMs) {
        if (!this.#timer)
          this.#timer = setTimeout(
            () => {
              this.#timer = undefined;
              this.#pump(false);
            },
            Math.max(1, this.limits.maxAgeMs - age),
          );
        return;
      }
      this.#dispatch(this.#take());
    }
  }

  /** The next batch: ready keys in order, each key's items in order, within the limits. */
  #take(): Queued<T>[] {
    const batch: Queued<T>[] = [];
    let bytes = 0;
    for (const key of this.#ready) {
      const list = this.#byKey.get(key)!;
      let n = 0;
      while (n < list.length && batch.length < this.limits.maxItems) {
        const item = list[n]!;
        // The first item always goes, so an item larger than maxBytes is sent alone, not stuck.
        if (batch.length > 0 && bytes + item.bytes > this.limits.maxBytes) break;
        batch.push(item);
        bytes += item.bytes;
        n++;
      }
      if (n === 0) break;
      list.splice(0, n);
      this.#ready.delete(key);
      this.#busy.add(key);
      // The key's remaining items are no longer ready: they wait for this batch.
      for (const rest of list) {
        this.#readyItems--;
        this.#readyBytes -= rest.bytes;
      }
      // A key cut short by a limit: the batch is full.
      if (list.length || batch.length >= this.limits.maxItems) break;
    }
    this.#readyItems -= batch.length;
    this.#readyBytes -= bytes;
    if (this.#readyItems === 0) {
      this.#openedAt = Number.POSITIVE_INFINITY;
      clearTimeout(this.#timer);
      this.#timer = undefined;
    }
    return batch;
  }

  #dispatch(batch: Queued<T>[]): void {
    this.#inFlight++;
    const keys = new Set(batch.map((i) => i.key));
    const settled = () => {
      this.#inFlight--;
      this.#queued -= batch.length;
      for (const key of keys) {
        this.#busy.delete(key);
        const list = this.#byKey.get(key);
        if (!list?.length) this.#byKey.delete(key);
        else if (!this.#stopped) this.#markReady(key, list);
      }
      this.#pump(false);
      this.onSettled?.();
    };
    this.send(batch).then(settled, settled);
  }
}
