import type { JsMsg } from "@nats-io/jetstream";
import type { Acknowledgement, WriteOutcome } from "../sink/sink.ts";

type Json = Record<string, unknown>;

/** What a taken message's (or stage batch's) acknowledgement reports to its runner. */
export interface Owner {
  stored(t: Taken, outcome: WriteOutcome): void;
  failed(t: Taken, error: unknown): void;
}

/**
 * Messages staged together, and what is to become of them: the acknowledgement that travels with
 * their rows into the sink (one object per message, no promise: messages settle by the thousand).
 */
export class Taken implements Acknowledgement {
  /** Until staged; then only their count and (for onLoaded) messageIds are kept, not the records. */
  records: Json[];
  kept = 0;
  ids?: string[];
  /** Its acknowledgements are issued, or it was given up: a message without rows after it may go. */
  ordered = false;
  /** Messages without rows taken after it, waiting for it to be ordered. */
  followers?: Taken[];
  #ok?: boolean;
  #done?: { promise: Promise<boolean>; resolve(ok: boolean): void };

  constructor(
    readonly owner: Owner,
    readonly messages: JsMsg[],
    records: Json[],
    public bytes: number,
    readonly acknowledge: boolean,
    readonly onSettled?: (m: JsMsg, done: Promise<boolean>) => void,
  ) {
    this.records = records;
  }

  stored(outcome: WriteOutcome): void {
    this.owner.stored(this, outcome);
  }

  failed(error: unknown): void {
    this.owner.failed(this, error);
  }

  get settled(): boolean {
    return this.#ok !== undefined;
  }

  /** true once acknowledged (its acknowledgements confirmed), false if given up. */
  get done(): Promise<boolean> {
    if (this.#ok !== undefined) return Promise.resolve(this.#ok);
    if (!this.#done) {
      let resolve!: (ok: boolean) => void;
      const promise = new Promise<boolean>((r) => (resolve = r));
      this.#done = { promise, resolve };
    }
    return this.#done.promise;
  }

  settle(ok: boolean): void {
    this.#ok = ok;
    this.#done?.resolve(ok);
  }
}
