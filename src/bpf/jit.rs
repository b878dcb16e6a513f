//! Classic BPF compiled to machine code with Cranelift: one function per filter,
//! `fn(data, len, wirelen) -> u32`, with no dispatch between instructions. Each packet load
//! is checked against `len` before it is made (a load past the end returns 0, as in the
//! interpreter and in libpcap), a division or remainder by an X of 0 returns 0, and shifts
//! by 32 or more give 0; A, X and the 16 scratch cells are SSA variables.
//!
//! The operations come from [`super::decode_ops`], which already refused what does not
//! hold up (jumps out of the program, scratch cells out of range, constant divisions by
//! 0, shifts by 32 or more, programs that do not end in a return). Whatever Cranelift
//! cannot do on this machine (it is not supported, the memory cannot be made executable)
//! gives `None`, and the interpreter runs the program instead.

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, AbiParam, Block, InstBuilder, MemFlags, UserFuncName, Value};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext, Variable};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, Linkage, Module};

use super::code::*;
use super::{Op, MEMWORDS};

/// The compiled function: the packet's bytes, how many, and its length on the wire.
type Entry = unsafe extern "C" fn(*const u8, usize, u32) -> u32;

/// A filter as machine code, and the memory that holds it.
pub(crate) struct Native {
    entry: Entry,
    /// Freed on drop (Cranelift's module would keep it otherwise).
    module: Option<JITModule>,
}

// SAFETY: the code is finalized before `Native` exists and never written again; the
// function reads only the bytes it is given (bounded by their length) and its own stack,
// so calling it from several threads at once, or from another thread, is sound. The
// module is only touched again to free the memory, on drop, with `&mut self`.
unsafe impl Send for Native {}
// SAFETY: see `Send`.
unsafe impl Sync for Native {}

impl std::fmt::Debug for Native {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Native")
    }
}

impl Drop for Native {
    fn drop(&mut self) {
        if let Some(module) = self.module.take() {
            // SAFETY: the only pointer into this memory is `entry`, which goes with
            // `self`.
            unsafe { module.free_memory() };
        }
    }
}

impl Native {
    /// Compiles `ops`; `None` when Cranelift cannot, here.
    pub(crate) fn compile(ops: &[Op]) -> Option<Native> {
        let mut flags = settings::builder();
        flags.set("opt_level", "speed").ok()?;
        // Cranelift's x64 backend wants non-PIC code for the JIT.
        flags.set("is_pic", "false").ok()?;
        let isa = cranelift_native::builder()
            .ok()?
            .finish(settings::Flags::new(flags))
            .ok()?;
        let mut module = JITModule::new(JITBuilder::with_isa(isa, default_libcall_names()));
        let mut ctx = module.make_context();
        let ptr = module.target_config().pointer_type();
        // A load's offset (K + X, each below 2^32) and its end are computed in a pointer:
        // only 64 bits hold them without wrapping, which the bounds check relies on.
        if ptr != types::I64 {
            return None;
        }
        let mut sig = module.make_signature();
        sig.params.push(AbiParam::new(ptr));
        sig.params.push(AbiParam::new(ptr));
        sig.params.push(AbiParam::new(types::I32));
        sig.returns.push(AbiParam::new(types::I32));
        let id = module
            .declare_function("bpf_filter", Linkage::Local, &sig)
            .ok()?;
        ctx.func.signature = sig;
        ctx.func.name = UserFuncName::user(0, id.as_u32());
        let mut fctx = FunctionBuilderContext::new();
        translate(ops, FunctionBuilder::new(&mut ctx.func, &mut fctx), ptr);
        module.define_function(id, &mut ctx).ok()?;
        module.clear_context(&mut ctx);
        module.finalize_definitions().ok()?;
        let code = module.get_finalized_function(id);
        // SAFETY: `code` is the function just compiled with the signature `Entry` says.
        let entry = unsafe { std::mem::transmute::<*const u8, Entry>(code) };
        Some(Native {
            entry,
            module: Some(module),
        })
    }

    /// Runs the filter over a packet (see [`super::Program::run`]).
    #[inline]
    pub(crate) fn run(&self, data: &[u8], wirelen: u32) -> u32 {
        // SAFETY: the function reads only `data.len()` bytes from `data.as_ptr()` (every
        // load is checked against the length first), which `data` holds.
        unsafe { (self.entry)(data.as_ptr(), data.len(), wirelen) }
    }
}

/// Emits the function for `ops` into `b`.
fn translate(ops: &[Op], mut b: FunctionBuilder<'_>, ptr: types::Type) {
    let entry = b.create_block();
    b.append_block_params_for_function_params(entry);
    let blocks: Vec<Block> = ops.iter().map(|_| b.create_block()).collect();
    let reject = b.create_block();

    b.switch_to_block(entry);
    let (data, len, wirelen) = {
        let p = b.block_params(entry);
        (p[0], p[1], p[2])
    };
    let a = b.declare_var(types::I32);
    let x = b.declare_var(types::I32);
    let mem: Vec<Variable> = (0..MEMWORDS).map(|_| b.declare_var(types::I32)).collect();
    let zero = b.ins().iconst(types::I32, 0);
    for v in std::iter::once(a).chain([x]).chain(mem.iter().copied()) {
        b.def_var(v, zero);
    }
    b.ins().jump(blocks[0], &[]);

    for (pc, op) in ops.iter().enumerate() {
        b.switch_to_block(blocks[pc]);
        let k = op.k;
        let kconst = |b: &mut FunctionBuilder<'_>| b.ins().iconst(types::I32, i64::from(k));
        // A load of `size` bytes at `k` (+ X): checked against `len`, then read.
        let load = |b: &mut FunctionBuilder<'_>, size: i64, indexed: bool| -> Value {
            let mut at = b.ins().iconst(ptr, i64::from(k));
            if indexed {
                let xv = b.use_var(x);
                let xw = b.ins().uextend(ptr, xv);
                at = b.ins().iadd(at, xw);
            }
            let end = b.ins().iadd_imm(at, size);
            let past = b.ins().icmp(IntCC::UnsignedGreaterThan, end, len);
            let ok = b.create_block();
            b.ins().brif(past, reject, &[], ok, &[]);
            b.switch_to_block(ok);
            b.seal_block(ok);
            let addr = b.ins().iadd(data, at);
            let flags = MemFlags::new().with_notrap().with_readonly();
            match size {
                4 => {
                    let v = b.ins().load(types::I32, flags, addr, 0);
                    b.ins().bswap(v)
                }
                2 => {
                    let v = b.ins().load(types::I16, flags, addr, 0);
                    let v = b.ins().bswap(v);
                    b.ins().uextend(types::I32, v)
                }
                _ => b.ins().uload8(types::I32, flags, addr, 0),
            }
        };
        let next = blocks.get(pc + 1).copied();
        let mut falls = true;
        match op.code {
            LD_ABS_W | LD_ABS_H | LD_ABS_B | LD_IND_W | LD_IND_H | LD_IND_B => {
                let size = [4, 2, 1][usize::from(op.code % 3)];
                let v = load(&mut b, size, op.code >= LD_IND_W);
                b.def_var(a, v);
            }
            LDX_MSH => {
                let byte = load(&mut b, 1, false);
                let low = b.ins().band_imm(byte, 0x0f);
                let v = b.ins().ishl_imm(low, 2);
                b.def_var(x, v);
            }
            LD_IMM => {
                let v = kconst(&mut b);
                b.def_var(a, v);
            }
            LDX_IMM => {
                let v = kconst(&mut b);
                b.def_var(x, v);
            }
            LD_LEN => b.def_var(a, wirelen),
            LDX_LEN => b.def_var(x, wirelen),
            LD_MEM => {
                let v = b.use_var(mem[k as usize]);
                b.def_var(a, v);
            }
            LDX_MEM => {
                let v = b.use_var(mem[k as usize]);
                b.def_var(x, v);
            }
            ST => {
                let v = b.use_var(a);
                b.def_var(mem[k as usize], v);
            }
            STX => {
                let v = b.use_var(x);
                b.def_var(mem[k as usize], v);
            }
            TAX => {
                let v = b.use_var(a);
                b.def_var(x, v);
            }
            TXA => {
                let v = b.use_var(x);
                b.def_var(a, v);
            }
            NEG => {
                let v = b.use_var(a);
                let v = b.ins().ineg(v);
                b.def_var(a, v);
            }
            ALU_K..JMP_K => {
                let (alu, by_x) = if op.code >= ALU_X {
                    (op.code - ALU_X, true)
                } else {
                    (op.code - ALU_K, false)
                };
                let av = b.use_var(a);
                let operand = if by_x { b.use_var(x) } else { kconst(&mut b) };
                if by_x && matches!(alu, DIV | MOD) {
                    // A division by an X of 0 rejects (a constant 0 was refused).
                    let ok = b.create_block();
                    b.ins().brif(operand, ok, &[], reject, &[]);
                    b.switch_to_block(ok);
                    b.seal_block(ok);
                }
                let v = match alu {
                    ADD => b.ins().iadd(av, operand),
                    SUB => b.ins().isub(av, operand),
                    MUL => b.ins().imul(av, operand),
                    DIV => b.ins().udiv(av, operand),
                    MOD => b.ins().urem(av, operand),
                    AND => b.ins().band(av, operand),
                    OR => b.ins().bor(av, operand),
                    XOR => b.ins().bxor(av, operand),
                    _ => {
                        // Cranelift takes the shift modulo 32; BPF's 32 and more give 0.
                        let shifted = if alu == LSH {
                            b.ins().ishl(av, operand)
                        } else {
                            b.ins().ushr(av, operand)
                        };
                        let wide = b
                            .ins()
                            .icmp_imm(IntCC::UnsignedGreaterThanOrEqual, operand, 32);
                        b.ins().select(wide, zero, shifted)
                    }
                };
                b.def_var(a, v);
            }
            JA => {
                b.ins().jump(blocks[usize::from(op.jt)], &[]);
                falls = false;
            }
            JMP_K..FUSED => {
                let by_x = op.code >= JMP_X;
                let cmp = op.code - if by_x { JMP_X } else { JMP_K };
                let av = b.use_var(a);
                let rhs = if by_x { b.use_var(x) } else { kconst(&mut b) };
                let cond = match cmp {
                    EQ => b.ins().icmp(IntCC::Equal, av, rhs),
                    GT => b.ins().icmp(IntCC::UnsignedGreaterThan, av, rhs),
                    GE => b.ins().icmp(IntCC::UnsignedGreaterThanOrEqual, av, rhs),
                    _ => b.ins().band(av, rhs),
                };
                let (jt, jf) = (blocks[usize::from(op.jt)], blocks[usize::from(op.jf)]);
                b.ins().brif(cond, jt, &[], jf, &[]);
                falls = false;
            }
            RET_K => {
                let v = kconst(&mut b);
                b.ins().return_(&[v]);
                falls = false;
            }
            RET_A => {
                let v = b.use_var(a);
                b.ins().return_(&[v]);
                falls = false;
            }
            // `decode_ops` makes no other (and no fused ones: they come later).
            _ => {
                b.ins().jump(reject, &[]);
                falls = false;
            }
        }
        if falls {
            // `decode_ops` checked that the last operation returns: there is a next one.
            match next {
                Some(next) => {
                    b.ins().jump(next, &[]);
                }
                None => {
                    b.ins().jump(reject, &[]);
                }
            }
        }
    }
    b.switch_to_block(reject);
    let nothing = b.ins().iconst(types::I32, 0);
    b.ins().return_(&[nothing]);
    b.seal_all_blocks();
    b.finalize();
}
