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

/** One key's state: its items not yet in a batch (from `head` on), and whether it waits in the ready queue or for a batch. */
interface KeyState<T> {
  items: Queued<T>[];
  head: number;
  ready: boolean;
  busy: boolean;
}

export class OrderedBatcher<T> {
  readonly #keys = new Map<string, KeyState<T>>();
  /** Keys with items and no batch under way, in the order they became ready (from `#readyHead` on). */
  #ready: KeyState<T>[] = [];
  #readyHead = 0;
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
      let k = this.#keys.get(key);
      if (!k) this.#keys.set(key, (k = { items: [], head: 0, ready: false, busy: false }));
      k.items.push({ key, bytes, value, at });
      this.#queued++;
      if (k.busy) continue;
      // Ready already, or made ready now: either way its new item counts as ready.
      this.#readyItems++;
      this.#readyBytes += bytes;
      if (at < this.#openedAt) this.#openedAt = at;
      if (!k.ready) {
        k.ready = true;
        this.#ready.push(k);
      }
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
    const left: Queued<T>[] = [];
    for (const k of this.#keys.values()) for (let i = k.head; i < k.items.length; i++) left.push(k.items[i]!);
    this.#keys.clear();
    this.#ready = [];
    this.#readyHead = 0;
    return left;
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
  #take(): { batch: Queued<T>[]; keys: KeyState<T>[] } {
    const batch: Queued<T>[] = [];
    const keys: KeyState<T>[] = [];
    let bytes = 0;
    while (this.#readyHead < this.#ready.length) {
      const k = this.#ready[this.#readyHead]!;
      let n = k.head;
      while (n < k.items.length && batch.length < this.limits.maxItems) {
        const item = k.items[n]!;
        // The first item always goes, so an item larger than maxBytes is sent alone, not stuck.
        if (batch.length > 0 && bytes + item.bytes > this.limits.maxBytes) break;
        batch.push(item);
        bytes += item.bytes;
        n++;
      }
      if (n === k.head) break;
      this.#readyHead++;
      k.head = n;
      k.ready = false;
      k.busy = true;
      keys.push(k);
      // The key's remaining items are no longer ready: they wait for this batch.
      for (let i = n; i < k.items.length; i++) {
        this.#readyItems--;
        this.#readyBytes -= k.items[i]!.bytes;
      }
      // A key cut short by a limit: the batch is full.
      if (n < k.items.length || batch.length >= this.limits.maxItems) break;
    }
    if (this.#readyHead > 1024 && this.#readyHead * 2 > this.#ready.length) {
      this.#ready = this.#ready.slice(this.#readyHead);
      this.#readyHead = 0;
    }
    this.#readyItems -= batch.length;
    this.#readyBytes -= bytes;
    if (this.#readyItems === 0) {
      this.#openedAt = Number.POSITIVE_INFINITY;
      clearTimeout(this.#timer);
      this.#timer = undefined;
    }
    return { batch, keys };
  }

  #dispatch({ batch, keys }: { batch: Queued<T>[]; keys: KeyState<T>[] }): void {
    this.#inFlight++;
    const settled = () => {
      this.#inFlight--;
      this.#queued -= batch.length;
      for (const k of keys) {
        k.busy = false;
        if (this.#stopped) continue;
        if (k.head >= k.items.length) {
          // Nothing left: forget the key (a new item starts it afresh).
          if (this.#keys.get(k.items[0]!.key) === k) this.#keys.delete(k.items[0]!.key);
          continue;
        }
        k.items = k.items.slice(k.head);
        k.head = 0;
        k.ready = true;
        this.#ready.push(k);
        for (const item of k.items) {
          this.#readyItems++;
          this.#readyBytes += item.bytes;
          if (item.at < this.#openedAt) this.#openedAt = item.at;
        }
      }
      this.#pump(false);
      this.onSettled?.();
    };
    this.send(batch).then(settled, settled);
  }
}
