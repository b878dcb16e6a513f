//! The filters libpcap compiles, run in this crate: the program is decoded once into
//! operations with their jump targets resolved, then compiled to machine code (`jit`,
//! with the feature of that name: 2.7 ns a packet for `tcp port 443` where libpcap's
//! interpreter takes 18–20, `cargo bench --bench filter`). Where that is not built or
//! fails, the interpreter here runs them: a load followed by a comparison of what it
//! loaded becomes one operation, with no call into C and no `pcap_pkthdr` to build.
//!
//! It runs what `pcap_compile` makes for a capture file (no Linux ancillary loads). A
//! program it does not take (an instruction it does not know, a jump out of the program,
//! a scratch cell out of range, a division by a constant 0, no return at the end) is
//! refused by [`Program::decode`], and the caller keeps libpcap's interpreter. Their
//! results are libpcap's: `libpcap::tests` runs all three over the same packets, and over
//! random programs.
//!
//! Semantics (those of libpcap's `bpf_filter`): a load past the captured bytes returns 0
//! (no match); a division or remainder by an X of 0 returns 0; shifts by 32 or more give
//! 0; arithmetic wraps.

/// One instruction as `struct bpf_insn` holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

/// Scratch memory cells (`BPF_MEMWORDS`).
const MEMWORDS: u32 = 16;
/// Loads at or above this offset are Linux's ancillary data (`SKF_AD_OFF`).
const ANCILLARY: u32 = 0xffff_f000;

#[cfg(feature = "jit")]
mod jit;

/// Operation codes of a decoded program: one per kind of instruction (no fields to look
/// into at run time), and fused ones for a load followed by a comparison of what it
/// loaded with a constant, the commonest pair in compiled filters.
mod code {
    pub const LD_ABS_W: u8 = 0;
    pub const LD_ABS_H: u8 = 1;
    pub const LD_ABS_B: u8 = 2;
    pub const LD_IND_W: u8 = 3;
    pub const LD_IND_H: u8 = 4;
    pub const LD_IND_B: u8 = 5;
    pub const LD_IMM: u8 = 6;
    pub const LD_MEM: u8 = 7;
    pub const LD_LEN: u8 = 8;
    pub const LDX_IMM: u8 = 9;
    pub const LDX_MEM: u8 = 10;
    pub const LDX_LEN: u8 = 11;
    pub const LDX_MSH: u8 = 12;
    pub const ST: u8 = 13;
    pub const STX: u8 = 14;
    pub const NEG: u8 = 15;
    pub const JA: u8 = 16;
    pub const RET_K: u8 = 17;
    pub const RET_A: u8 = 18;
    pub const TAX: u8 = 19;
    pub const TXA: u8 = 20;
    /// `ALU_K + op` and `ALU_X + op`, `op` one of [`ADD`]..[`XOR`].
    pub const ALU_K: u8 = 32;
    pub const ALU_X: u8 = 48;
    pub const ADD: u8 = 0;
    pub const SUB: u8 = 1;
    pub const MUL: u8 = 2;
    pub const DIV: u8 = 3;
    pub const MOD: u8 = 4;
    pub const AND: u8 = 5;
    pub const OR: u8 = 6;
    pub const XOR: u8 = 7;
    pub const LSH: u8 = 8;
    pub const RSH: u8 = 9;
    /// `JMP_K + cmp` and `JMP_X + cmp`, `cmp` one of [`EQ`]..[`SET`].
    pub const JMP_K: u8 = 64;
    pub const JMP_X: u8 = 68;
    pub const EQ: u8 = 0;
    pub const GT: u8 = 1;
    pub const GE: u8 = 2;
    pub const SET: u8 = 3;
    /// `FUSED + 4 * load + cmp`: load `LD_ABS_W + load` (one of the six packet loads),
    /// then `JMP_K + cmp` against `c`.
    pub const FUSED: u8 = 128;
}

/// A decoded operation: its code, jump targets (absolute, checked to be in the program),
/// its constant `k`, and for a fused one the constant `c` it compares with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Op {
    code: u8,
    jt: u16,
    jf: u16,
    k: u32,
    c: u32,
}

/// A decoded program, compiled to machine code where it can be (feature `jit`).
#[derive(Debug)]
pub(crate) struct Program {
    ops: Vec<Op>,
    #[cfg(feature = "jit")]
    native: Option<jit::Native>,
}

/// Reads `N` (4, 2 or 1) big-endian bytes at `at`, if the packet holds them.
#[inline(always)]
fn read<const N: usize>(data: &[u8], at: usize) -> Option<u32> {
    let b: &[u8; N] = data.get(at..at + N)?.try_into().ok()?;
    Some(match N {
        4 => u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        2 => u32::from(u16::from_be_bytes([b[0], b[1]])),
        _ => u32::from(b[0]),
    })
}

#[inline(always)]
fn alu(op: u8, a: u32, b: u32) -> Option<u32> {
    Some(match op {
        code::ADD => a.wrapping_add(b),
        code::SUB => a.wrapping_sub(b),
        code::MUL => a.wrapping_mul(b),
        code::DIV => a.checked_div(b)?,
        code::MOD => a.checked_rem(b)?,
        code::AND => a & b,
        code::OR => a | b,
        code::XOR => a ^ b,
        code::LSH => a.checked_shl(b).unwrap_or(0),
        _ => a.checked_shr(b).unwrap_or(0),
    })
}

impl Program {
    /// Decodes `insns`; `None` for a program this interpreter does not run (see the
    /// module's documentation). With the `jit` feature it is also compiled to machine
    /// code, which [`Program::run`] then uses (the interpreter stays for a machine where
    /// that fails).
    pub(crate) fn decode(insns: &[Insn]) -> Option<Program> {
        let (ops, target) = decode_ops(insns)?;
        #[cfg(feature = "jit")]
        let native = jit::Native::compile(&ops);
        Some(Program {
            ops: fuse(ops, &target),
            #[cfg(feature = "jit")]
            native,
        })
    }

    /// Whether it runs as machine code.
    pub(crate) fn is_native(&self) -> bool {
        #[cfg(feature = "jit")]
        return self.native.is_some();
        #[cfg(not(feature = "jit"))]
        false
    }

    /// Runs the program over a packet: `data` its captured bytes, `wirelen` its length on
    /// the wire. Non-zero: the packet matches (the snapshot length the filter returns).
    #[inline]
    pub(crate) fn run(&self, data: &[u8], wirelen: u32) -> u32 {
        #[cfg(feature = "jit")]
        if let Some(native) = &self.native {
            return native.run(data, wirelen);
        }
        self.interpret(data, wirelen)
    }
}

/// Decodes `insns` into operations (none fused), and where jumps land.
fn decode_ops(insns: &[Insn]) -> Option<(Vec<Op>, Vec<bool>)> {
    use code::*;
    let n = insns.len();
    if n == 0 || n > usize::from(u16::MAX) {
        return None;
    }
    // Where each jump lands (a fused pair must not be entered in its middle).
    let mut target = vec![false; n];
    let jump = |pc: usize, off: u32| -> Option<u16> {
        let to = pc.checked_add(1)?.checked_add(off as usize)?;
        (to < n).then_some(to as u16)
    };
    let mut ops = Vec::with_capacity(n);
    for (pc, i) in insns.iter().enumerate() {
        let size = i.code & 0x18;
        let mode = i.code & 0xe0;
        let src_x = i.code & 0x08 != 0;
        let mem = |k: u32| (k < MEMWORDS).then_some(k);
        let mut op = Op {
            code: 0,
            jt: 0,
            jf: 0,
            k: i.k,
            c: 0,
        };
        op.code = match i.code & 0x07 {
            // BPF_LD
            0x00 => match (mode, size) {
                (0x20 | 0x40, _) if i.k >= ANCILLARY => return None,
                (0x20, 0x00) => LD_ABS_W,
                (0x20, 0x08) => LD_ABS_H,
                (0x20, 0x10) => LD_ABS_B,
                (0x40, 0x00) => LD_IND_W,
                (0x40, 0x08) => LD_IND_H,
                (0x40, 0x10) => LD_IND_B,
                (0x00, 0x00) => LD_IMM,
                (0x60, 0x00) => {
                    mem(i.k)?;
                    LD_MEM
                }
                (0x80, 0x00) => LD_LEN,
                _ => return None,
            },
            // BPF_LDX
            0x01 => match (mode, size) {
                (0x00, 0x00) => LDX_IMM,
                (0x60, 0x00) => {
                    mem(i.k)?;
                    LDX_MEM
                }
                (0x80, 0x00) => LDX_LEN,
                (0xa0, 0x10) if i.k < ANCILLARY => LDX_MSH,
                _ => return None,
            },
            0x02 => {
                mem(i.k)?;
                ST
            }
            0x03 => {
                mem(i.k)?;
                STX
            }
            // BPF_ALU
            0x04 => {
                let alu = match i.code & 0xf0 {
                    0x00 => ADD,
                    0x10 => SUB,
                    0x20 => MUL,
                    0x30 => DIV,
                    0x40 => OR,
                    0x50 => AND,
                    0x60 => LSH,
                    0x70 => RSH,
                    0x80 => NEG,
                    0x90 => MOD,
                    0xa0 => XOR,
                    _ => return None,
                };
                if alu == NEG {
                    NEG
                } else if src_x {
                    ALU_X + alu
                } else if matches!(alu, DIV | MOD) && i.k == 0
                    || matches!(alu, LSH | RSH) && i.k >= 32
                {
                    // libpcap refuses the first; the second is undefined in its C.
                    return None;
                } else {
                    ALU_K + alu
                }
            }
            // BPF_JMP
            0x05 => {
                let cmp = match i.code & 0xf0 {
                    0x00 => {
                        let to = jump(pc, i.k)?;
                        target[usize::from(to)] = true;
                        op.jt = to;
                        ops.push(Op { code: JA, ..op });
                        continue;
                    }
                    0x10 => EQ,
                    0x20 => GT,
                    0x30 => GE,
                    0x40 => SET,
                    _ => return None,
                };
                op.jt = jump(pc, i.jt.into())?;
                op.jf = jump(pc, i.jf.into())?;
                target[usize::from(op.jt)] = true;
                target[usize::from(op.jf)] = true;
                if src_x {
                    JMP_X + cmp
                } else {
                    JMP_K + cmp
                }
            }
            // BPF_RET: K or A (libpcap's interpreter knows no other).
            0x06 => match i.code & 0x18 {
                0x00 => RET_K,
                0x10 => RET_A,
                _ => return None,
            },
            // BPF_MISC
            _ => match i.code & 0xf8 {
                0x00 => TAX,
                0x80 => TXA,
                _ => return None,
            },
        };
        ops.push(op);
    }
    // Every path ends in a return: jumps go forward and stay inside, and the last
    // instruction cannot fall through.
    if !matches!(ops.last().map(|o| o.code), Some(RET_K | RET_A)) {
        return None;
    }
    Some((ops, target))
}

/// Fuses each packet load with the comparison with a constant that follows it, unless
/// something jumps to the comparison (which is then never reached: it stays, dead).
fn fuse(mut ops: Vec<Op>, target: &[bool]) -> Vec<Op> {
    use code::*;
    for pc in 0..ops.len().saturating_sub(1) {
        let (ld, jmp) = (ops[pc], ops[pc + 1]);
        if ld.code <= LD_IND_B && (JMP_K..JMP_K + 4).contains(&jmp.code) && !target[pc + 1] {
            ops[pc] = Op {
                code: FUSED + 4 * ld.code + (jmp.code - JMP_K),
                jt: jmp.jt,
                jf: jmp.jf,
                k: ld.k,
                c: jmp.k,
            };
        }
    }
    ops
}

impl Program {
    /// [`Program::run`] by the interpreter.
    pub(crate) fn interpret(&self, data: &[u8], wirelen: u32) -> u32 {
        use code::*;
        let (mut a, mut x) = (0u32, 0u32);
        let mut mem = [0u32; MEMWORDS as usize];
        let mut pc = 0usize;
        loop {
            // In bounds: `decode` checked every target and that the last op returns.
            let op = self.ops[pc];
            pc += 1;
            // Each arm's size and comparison are constants: no field is looked into.
            macro_rules! load {
                ($n:literal, $at:expr) => {
                    match read::<$n>(data, $at) {
                        Some(v) => v,
                        None => return 0,
                    }
                };
            }
            macro_rules! jump {
                ($cond:expr) => {
                    pc = usize::from(if $cond { op.jt } else { op.jf })
                };
            }
            let (k, ind) = (op.k as usize, op.k as usize + x as usize);
            match op.code {
                // Fused: FUSED + 4 * load + cmp.
                0x80 => {
                    a = load!(4, k);
                    jump!(a == op.c)
                }
                0x81 => {
                    a = load!(4, k);
                    jump!(a > op.c)
                }
                0x82 => {
                    a = load!(4, k);
                    jump!(a >= op.c)
                }
                0x83 => {
                    a = load!(4, k);
                    jump!(a & op.c != 0)
                }
                0x84 => {
                    a = load!(2, k);
                    jump!(a == op.c)
                }
                0x85 => {
                    a = load!(2, k);
                    jump!(a > op.c)
                }
                0x86 => {
                    a = load!(2, k);
                    jump!(a >= op.c)
                }
                0x87 => {
                    a = load!(2, k);
                    jump!(a & op.c != 0)
                }
                0x88 => {
                    a = load!(1, k);
                    jump!(a == op.c)
                }
                0x89 => {
                    a = load!(1, k);
                    jump!(a > op.c)
                }
                0x8a => {
                    a = load!(1, k);
                    jump!(a >= op.c)
                }
                0x8b => {
                    a = load!(1, k);
                    jump!(a & op.c != 0)
                }
                0x8c => {
                    a = load!(4, ind);
                    jump!(a == op.c)
                }
                0x8d => {
                    a = load!(4, ind);
                    jump!(a > op.c)
                }
                0x8e => {
                    a = load!(4, ind);
                    jump!(a >= op.c)
                }
                0x8f => {
                    a = load!(4, ind);
                    jump!(a & op.c != 0)
                }
                0x90 => {
                    a = load!(2, ind);
                    jump!(a == op.c)
                }
                0x91 => {
                    a = load!(2, ind);
                    jump!(a > op.c)
                }
                0x92 => {
                    a = load!(2, ind);
                    jump!(a >= op.c)
                }
                0x93 => {
                    a = load!(2, ind);
                    jump!(a & op.c != 0)
                }
                0x94 => {
                    a = load!(1, ind);
                    jump!(a == op.c)
                }
                0x95 => {
                    a = load!(1, ind);
                    jump!(a > op.c)
                }
                0x96 => {
                    a = load!(1, ind);
                    jump!(a >= op.c)
                }
                0x97 => {
                    a = load!(1, ind);
                    jump!(a & op.c != 0)
                }
                LD_ABS_W => a = load!(4, k),
                LD_ABS_H => a = load!(2, k),
                LD_ABS_B => a = load!(1, k),
                LD_IND_W => a = load!(4, ind),
                LD_IND_H => a = load!(2, ind),
                LD_IND_B => a = load!(1, ind),
                0x40 => jump!(a == op.k),
                0x41 => jump!(a > op.k),
                0x42 => jump!(a >= op.k),
                0x43 => jump!(a & op.k != 0),
                0x44 => jump!(a == x),
                0x45 => jump!(a > x),
                0x46 => jump!(a >= x),
                0x47 => jump!(a & x != 0),
                LDX_MSH => match data.get(op.k as usize) {
                    Some(b) => x = u32::from(b & 0x0f) << 2,
                    None => return 0,
                },
                RET_K => return op.k,
                RET_A => return a,
                JA => pc = usize::from(op.jt),
                LD_IMM => a = op.k,
                LD_MEM => a = mem[op.k as usize],
                LD_LEN => a = wirelen,
                LDX_IMM => x = op.k,
                LDX_MEM => x = mem[op.k as usize],
                LDX_LEN => x = wirelen,
                ST => mem[op.k as usize] = a,
                STX => mem[op.k as usize] = x,
                ALU_K..ALU_X => match alu(op.code - ALU_K, a, op.k) {
                    Some(v) => a = v,
                    None => return 0,
                },
                ALU_X..JMP_K => match alu(op.code - ALU_X, a, x) {
                    Some(v) => a = v,
                    None => return 0,
                },
                NEG => a = a.wrapping_neg(),
                TAX => x = a,
                TXA => a = x,
                _ => return 0,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insn(code: u16, jt: u8, jf: u8, k: u32) -> Insn {
        Insn { code, jt, jf, k }
    }

    /// `tcp port 443` as libpcap 1.10 compiles it for Ethernet.
    fn tcp_443() -> Vec<Insn> {
        vec![
            insn(0x28, 0, 0, 12),
            insn(0x15, 0, 6, 0x86dd),
            insn(0x30, 0, 0, 20),
            insn(0x15, 0, 15, 6),
            insn(0x28, 0, 0, 54),
            insn(0x15, 12, 0, 443),
            insn(0x28, 0, 0, 56),
            insn(0x15, 10, 11, 443),
            insn(0x15, 0, 10, 0x800),
            insn(0x30, 0, 0, 23),
            insn(0x15, 0, 8, 6),
            insn(0x28, 0, 0, 20),
            insn(0x45, 6, 0, 0x1fff),
            insn(0xb1, 0, 0, 14),
            insn(0x48, 0, 0, 14),
            insn(0x15, 2, 0, 443),
            insn(0x48, 0, 0, 16),
            insn(0x15, 0, 1, 443),
            insn(0x06, 0, 0, 262_144),
            insn(0x06, 0, 0, 0),
        ]
    }

    fn ipv4_tcp(dst_port: u16) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6]);
        f.extend_from_slice(&[0; 10]);
        f.extend_from_slice(&40000u16.to_be_bytes());
        f.extend_from_slice(&dst_port.to_be_bytes());
        f.resize(64, 0);
        f
    }

    #[test]
    fn a_compiled_filter_runs_and_loads_past_the_end_reject() {
        let p = Program::decode(&tcp_443()).unwrap();
        assert_eq!(p.run(&ipv4_tcp(443), 64), 262_144);
        assert_eq!(p.run(&ipv4_tcp(80), 64), 0);
        // Cut before the ports: the load fails, no match.
        assert_eq!(p.run(&ipv4_tcp(443)[..36], 64), 0);
        assert_eq!(p.run(&[], 0), 0);
        // Loads and their comparisons were fused where nothing jumps between them.
        assert!(p.ops.iter().any(|op| op.code >= code::FUSED));
    }

    #[test]
    fn programs_it_cannot_run_are_refused() {
        let ret = insn(0x06, 0, 0, 1);
        for bad in [
            vec![],
            vec![insn(0x28, 0, 0, 12)],      // no return at the end
            vec![insn(0x15, 5, 0, 1), ret],  // a jump out of the program
            vec![insn(0x05, 0, 0, 7), ret],  // ja out of it
            vec![insn(0x60, 0, 0, 16), ret], // scratch cell 16
            vec![insn(0x34, 0, 0, 0), ret],  // a division by 0
            vec![insn(0x64, 0, 0, 32), ret], // a shift by 32
            vec![insn(0x20, 0, 0, 0xffff_f000 + 44), ret], // ancillary data
            vec![insn(0x0e, 0, 0, 0), ret],  // no such class and mode
        ] {
            assert!(Program::decode(&bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn arithmetic_and_scratch_memory_follow_libpcap() {
        // A = len; M[3] = A; X = 3; A = A / X; A = A << 4; if A == 528: A = M[3] % X;
        // ret A
        let p = Program::decode(&[
            insn(0x80, 0, 0, 0),
            insn(0x02, 0, 0, 3),
            insn(0x01, 0, 0, 3),
            insn(0x3c, 0, 0, 0),
            insn(0x64, 0, 0, 4),
            insn(0x15, 0, 2, 528),
            insn(0x60, 0, 0, 3),
            insn(0x9c, 0, 0, 0),
            insn(0x16, 0, 0, 0),
        ])
        .unwrap();
        assert_eq!(p.run(&[], 100), 1);
        // A division by an X of 0 rejects.
        let div0 = Program::decode(&[
            insn(0x00, 0, 0, 5),
            insn(0x01, 0, 0, 0),
            insn(0x3c, 0, 0, 0),
            insn(0x06, 0, 0, 1),
        ])
        .unwrap();
        assert_eq!(div0.run(&[], 0), 0);
    }
}
