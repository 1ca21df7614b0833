/**
 * Sustained load with unique messageIds, recording which ids got a 2xx: the ground truth a
 * fault test compares the warehouse against.
 */
export interface LoadOptions {
  /** Base URL to post to; a function so a test can move load between nodes. */
  url: () => string;
  writeKey: string;
  clients?: number;
  eventsPerRequest?: number;
  /** Pause between a client's requests. */
  pauseMs?: number;
  prefix?: string;
}

export class Load {
  readonly accepted: string[] = [];
  readonly statuses = new Map<number, number>();
  /** The first answer of each status: its body and Retry-After (to tell one 503 from another). */
  readonly firstAnswer = new Map<number, { body: string; retryAfter: string | null }>();
  #running = true;
  #clients: Promise<void>[];
  #seq = 0;

  constructor(readonly o: LoadOptions) {
    this.#clients = Array.from({ length: o.clients ?? 4 }, (_, c) => this.#client(c));
  }

  get requests(): number {
    let n = 0;
    for (const v of this.statuses.values()) n += v;
    return n;
  }

  async #client(c: number): Promise<void> {
    const n = this.o.eventsPerRequest ?? 20;
    while (this.#running) {
      const ids = Array.from({ length: n }, () => `${this.o.prefix ?? "load"}-${c}-${this.#seq++}`);
      const body = JSON.stringify(
        ids.map((id) => ({ type: "track", event: "Load", userId: `u${c}`, messageId: id, properties: { n: 1 } })),
      );
      let status = 0;
      try {
        const r = await fetch(`${this.o.url()}/v1/events`, {
          method: "POST",
          headers: { Authorization: `Bearer ${this.o.writeKey}` },
          body,
        });
        const text = await r.text();
        status = r.status;
        if (!this.firstAnswer.has(status))
          this.firstAnswer.set(status, { body: text, retryAfter: r.headers.get("retry-after") });
      } catch {
        await Bun.sleep(50); // node down: don't spin
      }
      this.statuses.set(status, (this.statuses.get(status) ?? 0) + 1);
      if (status === 200) this.accepted.push(...ids);
      if (this.o.pauseMs) await Bun.sleep(this.o.pauseMs);
    }
  }

  async stop(): Promise<void> {
    this.#running = false;
    await Promise.all(this.#clients);
  }
}
