/**
 * Code-generation plumbing: the statement buffer, compile-time scopes, and static type masks.
 *
 * Each AST node compiles to statements plus a `Val`: a JS expression (a temporary or a literal)
 * holding the node's value, and a mask of the types that value can have. Masks let the generator
 * drop checks jsonata performs at run time when the type is already known (a comparison is a
 * boolean, a string literal is never a sequence, ...).
 */
import type { JsonataNode } from "./interpreter.ts";

export type Node = JsonataNode;

// type mask bits
export const S = 1; // string
export const N = 2; // number
export const B = 4; // boolean
export const L = 8; // null
export const U = 16; // undefined
export const O = 32; // object
export const A = 64; // array that is not a sequence
export const Q = 128; // sequence
export const F = 256; // function
export const T = 512; // pending tail call
export const ANY = 1023;

export interface Val {
  /** JS expression: a temporary, a constant or a literal - cheap and side-effect free */
  c: string;
  /** possible types */
  m: number;
}

/** Raised while generating code for a construct the compiler leaves to the interpreter. */
export class Unsupported extends Error {
  constructor(what: string) {
    super(`not compiled: ${what}`);
    this.name = "Unsupported";
  }
}

export interface VarSlot {
  id: string;
  /** always bound (a parameter); otherwise starts unbound and is bound by `:=` */
  definite: boolean;
}

/**
 * One jsonata frame (the root, a block, a lambda, a tuple): the variables bound in it. A tuple
 * frame also binds the keys of the tuple held in the JS variable `tuple`.
 */
export class Scope {
  readonly vars = new Map<string, VarSlot>();
  constructor(
    readonly parent: Scope | null,
    readonly tuple?: string,
  ) {}
}

export class Emitter {
  private readonly lines: string[] = [];
  private depth = 1;
  private counter = 0;
  private readonly consts: unknown[] = [];
  private readonly constIndex = new Map<unknown, number>();

  tmp(prefix = "t"): string {
    return `${prefix}${this.counter++}`;
  }

  line(code: string): void {
    this.lines.push("  ".repeat(this.depth) + code);
  }

  open(code: string): void {
    this.line(code);
    this.depth++;
  }

  /** A line between two halves of a construct, e.g. `} else {`. */
  mid(code: string): void {
    this.depth--;
    this.line(code);
    this.depth++;
  }

  close(code = "}"): void {
    this.depth--;
    this.line(code);
  }

  /** Declares a temporary initialised to `init`. */
  let(init: string): string {
    const t = this.tmp();
    this.line(`let ${t} = ${init};`);
    return t;
  }

  /** A value from the AST (regex, signature validator, name list) as a constant of the closure. */
  constant(v: unknown): string {
    let i = this.constIndex.get(v);
    if (i === undefined) {
      i = this.consts.length;
      this.consts.push(v);
      this.constIndex.set(v, i);
    }
    return `K[${i}]`;
  }

  constants(): unknown[] {
    return this.consts;
  }

  text(): string {
    return this.lines.join("\n");
  }
}

/** A JS literal for a value from the expression - never spliced raw into the source. */
export function literal(v: unknown): string {
  if (v === undefined) return "undefined";
  if (typeof v === "number") {
    if (Object.is(v, -0)) return "(-0)";
    if (!Number.isFinite(v)) return Number.isNaN(v) ? "NaN" : v > 0 ? "Infinity" : "-Infinity";
    return v < 0 ? `(${String(v)})` : String(v);
  }
  return JSON.stringify(v);
}
