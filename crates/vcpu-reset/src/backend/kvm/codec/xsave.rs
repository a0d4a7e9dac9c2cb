//! The XSAVE image of KVM_GET/SET_XSAVE(2) ↔ [`VcpuState`]: x87, MXCSR, XMM/YMM/ZMM, opmask
//! and PKRU ([`StateClass::Fpu`](crate::slots::StateClass::Fpu)).
//!
//! The image is in the standard (non-compacted) format (SDM Vol. 1 §13.4, APM Vol. 2 §11.5.3):
//! the 512-byte legacy FXSAVE region in its 64-bit layout (SDM Vol. 1 §10.5.1 Table 10-2; FIP
//! and FDP are 64-bit, there are no FCS/FDS), the XSAVE header (XSTATE_BV at byte 512), then
//! each component at the offset CPUID.(EAX=0DH,ECX=i).EBX gives ([`XsaveLayout`]). A component
//! whose XSTATE_BV bit is clear is in its initial configuration (SDM Vol. 1 §13.6): zeros,
//! except x87's FCW 0x37F with every register empty; MXCSR always comes from the legacy
//! region. [`xsave_from_state`] writes x87, SSE and every mapped component the CPUID enables
//! (YMM_Hi128 2, opmask 5, ZMM_Hi256 6, Hi16_ZMM 7, PKRU 9, and AMX's XTILECFG 17 and XTILEDATA
//! 18 where the image has room for them: KVM_GET_XSAVE2's size, which covers them only once the
//! VMM asked for them with ARCH_REQ_XCOMP_GUEST_PERM) and sets their XSTATE_BV bits, except an
//! AMX component that is all zero, which is written as its initial configuration (XSTATE_BV
//! bit clear: the same state, and no tile data is restored without a tile configuration);
//! components this mapping does not know are left in their initial configuration.

use kvm_bindings::CpuId;
use vcpu_reset_spec::x87::{self, FxsaveFormat, FxsaveImage};
use vcpu_reset_spec::{Field, VcpuState};

/// Size of `struct kvm_xsave`, the image KVM_GET_XSAVE fills.
pub const KVM_XSAVE_SIZE: usize = 4096;
const XSTATE_BV: usize = 512;
const HEADER_END: usize = 576;
const X87: u64 = 1 << 0;
const SSE: u64 = 1 << 1;
/// x87 control word of the initial configuration (FNINIT/XRSTOR init).
const FCW_INIT: u16 = 0x037f;
/// MXCSR_MASK written on store: all MXCSR bits of SSE2 (the kernel ignores it on restore).
const MXCSR_MASK: u32 = 0xffff;

/// The XSAVE components this mapping knows, with their architectural sizes (SDM Vol. 1
/// §13.1, Table 13-1 and the component sections of Chapter 13).
const COMPONENTS: [(usize, usize); 7] = [
    (2, 256),
    (5, 64),
    (6, 512),
    (7, 1024),
    (9, 8),
    (XTILECFG, 64),
    (XTILEDATA, 8192),
];
/// AMX's tile configuration, XSAVE component 17.
const XTILECFG: usize = 17;
/// AMX's tile data, XSAVE component 18.
const XTILEDATA: usize = 18;

/// Where the vCPU's XSAVE image keeps each component.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XsaveLayout {
    /// Size of the image in bytes.
    size: usize,
    /// CPUID.(EAX=0DH,ECX=0) EDX:EAX, the XCR0 bits the vCPU supports.
    xcr0: u64,
    /// Offset of component `i`, where the vCPU supports it and the image holds it.
    offsets: [Option<usize>; 19],
}

impl XsaveLayout {
    /// Size of the image in bytes (at least [`KVM_XSAVE_SIZE`]).
    pub fn size(&self) -> usize {
        self.size
    }

    /// The layout the vCPU's CPUID describes, for an image of `xsave2_size` bytes (at least 4 KiB).
    pub fn from_cpuid(cpuid: &CpuId, xsave2_size: usize) -> Self {
        let size = xsave2_size.max(KVM_XSAVE_SIZE);
        let leaf = |index: u32| {
            cpuid
                .as_slice()
                .iter()
                .find(|e| e.function == 0xd && e.index == index)
        };
        let xcr0 = leaf(0).map_or(0, |e| u64::from(e.eax) | (u64::from(e.edx) << 32));
        let mut offsets = [None; 19];
        for (component, bytes) in COMPONENTS {
            if xcr0 & (1 << component) == 0 {
                continue;
            }
            let Some(e) = leaf(component as u32) else {
                continue;
            };
            let offset = e.ebx as usize;
            if e.eax as usize == bytes && offset >= HEADER_END && offset + bytes <= size {
                offsets[component] = Some(offset);
            }
        }
        XsaveLayout {
            size,
            xcr0,
            offsets,
        }
    }

    /// Whether x87 and SSE are there, so the class can be held at all.
    pub fn usable(&self) -> bool {
        self.xcr0 & (X87 | SSE) == X87 | SSE
    }

    /// The components the CPUID offers (CPUID.(EAX=0DH,ECX=0) EDX:EAX), held or not.
    pub fn offered(&self) -> u64 {
        self.xcr0
    }

    /// The components held, as an XCR0-style mask.
    pub fn held_components(&self) -> u64 {
        self.offsets
            .iter()
            .enumerate()
            .filter(|(_, o)| o.is_some())
            .fold(X87 | SSE, |mask, (i, _)| mask | (1 << i))
    }

    /// Whether the field's component is held.
    pub fn holds(&self, field: Field) -> bool {
        let component = match field {
            Field::YmmHi(_) => 2,
            Field::Opmask(_) => 5,
            Field::ZmmHi256(..) => 6,
            Field::Hi16Zmm(..) => 7,
            Field::Pkru => 9,
            Field::TileCfg(_) => XTILECFG,
            Field::TileData(..) => XTILEDATA,
            _ => return true,
        };
        self.offsets[component].is_some()
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

fn u128_at(b: &[u8], at: usize, len: usize) -> u128 {
    let mut w = [0u8; 16];
    w[..len].copy_from_slice(&b[at..at + len]);
    u128::from_le_bytes(w)
}

fn put(b: &mut [u8], at: usize, bytes: &[u8]) {
    b[at..at + bytes.len()].copy_from_slice(bytes);
}

/// Read the state out of an XSAVE image.
pub fn xsave_to_state(b: &[u8], layout: &XsaveLayout, state: &mut VcpuState) {
    let xstate_bv = u64_at(b, XSTATE_BV);
    let legacy = FxsaveImage::read(b, FxsaveFormat::Rex64);
    let fpu = &mut state.fpu;
    if xstate_bv & X87 != 0 {
        fpu.fcw = legacy.fcw;
        fpu.fsw = legacy.fsw;
        fpu.fop = legacy.fop;
        fpu.fip = legacy.fip;
        fpu.fdp = legacy.fdp;
        fpu.st = legacy.st;
        fpu.ftw = legacy.ftw();
    } else {
        fpu.fcw = FCW_INIT;
        fpu.fsw = 0;
        fpu.fop = 0;
        fpu.fip = 0;
        fpu.fdp = 0;
        fpu.st = [0; 8];
        fpu.ftw = 0xffff;
    }
    fpu.mxcsr = legacy.mxcsr;
    let v = &mut state.vectors;
    let present = |component: usize| xstate_bv & (1 << component) != 0;
    v.xmm = if present(1) { legacy.xmm } else { [0; 16] };
    let component = |i: usize| layout.offsets[i].map(|o| (o, present(i)));
    if let Some((o, p)) = component(2) {
        for (i, r) in v.ymm_hi.iter_mut().enumerate() {
            *r = if p { u128_at(b, o + 16 * i, 16) } else { 0 };
        }
    }
    if let Some((o, p)) = component(5) {
        for (i, k) in v.opmask.iter_mut().enumerate() {
            *k = if p { u64_at(b, o + 8 * i) } else { 0 };
        }
    }
    if let Some((o, p)) = component(6) {
        for (i, r) in v.zmm_hi256.iter_mut().enumerate() {
            for (l, lane) in r.iter_mut().enumerate() {
                *lane = if p {
                    u128_at(b, o + 32 * i + 16 * l, 16)
                } else {
                    0
                };
            }
        }
    }
    if let Some((o, p)) = component(7) {
        for (i, r) in v.hi16_zmm.iter_mut().enumerate() {
            for (l, lane) in r.iter_mut().enumerate() {
                *lane = if p {
                    u128_at(b, o + 64 * i + 16 * l, 16)
                } else {
                    0
                };
            }
        }
    }
    if let Some((o, p)) = component(9) {
        state.pkru = if p { u32_at(b, o) } else { 0 };
    }
    if let Some((o, p)) = component(XTILECFG) {
        for (i, r) in v.xtilecfg.iter_mut().enumerate() {
            *r = if p { u128_at(b, o + 16 * i, 16) } else { 0 };
        }
    }
    if let Some((o, p)) = component(XTILEDATA) {
        for (h, half) in v.xtiledata.iter_mut().enumerate() {
            for (i, r) in half.iter_mut().enumerate() {
                *r = if p {
                    u128_at(b, o + 512 * h + 16 * i, 16)
                } else {
                    0
                };
            }
        }
    }
}

/// The XSAVE image of the state, with every held component present.
pub fn xsave_from_state(state: &VcpuState, layout: &XsaveLayout) -> Vec<u8> {
    let mut b = vec![0u8; layout.size];
    let fpu = &state.fpu;
    put(&mut b, 0, &fpu.fcw.to_le_bytes());
    put(&mut b, 2, &fpu.fsw.to_le_bytes());
    b[4] = x87::abridged_tag_word(fpu.ftw);
    put(&mut b, 6, &(fpu.fop & 0x7ff).to_le_bytes());
    put(&mut b, 8, &fpu.fip.to_le_bytes());
    put(&mut b, 16, &fpu.fdp.to_le_bytes());
    put(&mut b, 24, &fpu.mxcsr.to_le_bytes());
    put(&mut b, 28, &MXCSR_MASK.to_le_bytes());
    for (i, st) in fpu.st.iter().enumerate() {
        put(&mut b, 32 + 16 * i, &st.to_le_bytes()[..10]);
    }
    let v = &state.vectors;
    for (i, xmm) in v.xmm.iter().enumerate() {
        put(&mut b, 160 + 16 * i, &xmm.to_le_bytes());
    }
    if let Some(o) = layout.offsets[2] {
        for (i, r) in v.ymm_hi.iter().enumerate() {
            put(&mut b, o + 16 * i, &r.to_le_bytes());
        }
    }
    if let Some(o) = layout.offsets[5] {
        for (i, k) in v.opmask.iter().enumerate() {
            put(&mut b, o + 8 * i, &k.to_le_bytes());
        }
    }
    if let Some(o) = layout.offsets[6] {
        for (i, r) in v.zmm_hi256.iter().enumerate() {
            for (l, lane) in r.iter().enumerate() {
                put(&mut b, o + 32 * i + 16 * l, &lane.to_le_bytes());
            }
        }
    }
    if let Some(o) = layout.offsets[7] {
        for (i, r) in v.hi16_zmm.iter().enumerate() {
            for (l, lane) in r.iter().enumerate() {
                put(&mut b, o + 64 * i + 16 * l, &lane.to_le_bytes());
            }
        }
    }
    if let Some(o) = layout.offsets[9] {
        put(&mut b, o, &state.pkru.to_le_bytes());
    }
    let mut xstate_bv = layout.held_components();
    if let Some(o) = layout.offsets[XTILECFG] {
        for (i, r) in v.xtilecfg.iter().enumerate() {
            put(&mut b, o + 16 * i, &r.to_le_bytes());
        }
        if v.xtilecfg.iter().all(|r| *r == 0) {
            xstate_bv &= !(1 << XTILECFG);
        }
    }
    if let Some(o) = layout.offsets[XTILEDATA] {
        for (h, half) in v.xtiledata.iter().enumerate() {
            for (i, r) in half.iter().enumerate() {
                put(&mut b, o + 512 * h + 16 * i, &r.to_le_bytes());
            }
        }
        if v.xtiledata.iter().flatten().all(|r| *r == 0) {
            xstate_bv &= !(1 << XTILEDATA);
        }
    }
    put(&mut b, XSTATE_BV, &xstate_bv.to_le_bytes());
    b
}

/// Append the little-endian bytes of `words` (a `kvm_xsave` region or XSAVE2 tail) to `out`.
pub fn words_to_bytes(words: &[u32], out: &mut Vec<u8>) {
    out.extend(words.iter().flat_map(|w| w.to_le_bytes()));
}

/// Fill `words` (a `kvm_xsave` region or XSAVE2 tail) from little-endian `bytes`; a short
/// last word is zero-padded.
pub fn bytes_to_words(bytes: &[u8], words: &mut [u32]) {
    for (w, chunk) in words.iter_mut().zip(bytes.chunks(4)) {
        let mut le = [0u8; 4];
        le[..chunk.len()].copy_from_slice(chunk);
        *w = u32::from_le_bytes(le);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn avx512_layout() -> XsaveLayout {
        let mut offsets = [None; 19];
        offsets[2] = Some(0x240);
        offsets[5] = Some(0x440);
        offsets[6] = Some(0x480);
        offsets[7] = Some(0x680);
        XsaveLayout {
            size: KVM_XSAVE_SIZE,
            xcr0: 0xe7,
            offsets,
        }
    }

    #[test]
    fn image_round_trip() {
        let layout = avx512_layout();
        let mut state = VcpuState::default();
        state.fpu.fcw = 0x0040;
        state.fpu.ftw = 0x5555;
        state.fpu.fsw = 0x3800; // TOP = 7
        state.fpu.fop = 0x7ff;
        state.fpu.fip = 0x1234_5678_9abc;
        state.fpu.mxcsr = 0x1f80;
        state.vectors.xmm[15] = u128::MAX - 1;
        state.vectors.ymm_hi[3] = 0x33;
        state.vectors.opmask[7] = 0x77;
        state.vectors.zmm_hi256[15][1] = 0x1501;
        state.vectors.hi16_zmm[0][3] = 0x1603;
        let image = xsave_from_state(&state, &layout);
        assert_eq!(u64_at(&image, XSTATE_BV), 0xe7);
        assert_eq!(image[4], 0xff, "abridged tag");
        assert_eq!(u64_at(&image, 0x440 + 7 * 8), 0x77);
        let mut back = VcpuState::default();
        xsave_to_state(&image, &layout, &mut back);
        assert_eq!(back.fpu, state.fpu);
        assert_eq!(back.vectors, state.vectors);
    }

    #[test]
    fn clear_components_are_in_init_configuration() {
        let layout = avx512_layout();
        let mut image = vec![0xaau8; KVM_XSAVE_SIZE];
        put(&mut image, XSTATE_BV, &0u64.to_le_bytes());
        put(&mut image, 24, &0x1f80u32.to_le_bytes());
        let mut state = VcpuState::default();
        state.vectors.opmask[0] = 1;
        xsave_to_state(&image, &layout, &mut state);
        assert_eq!(
            (state.fpu.fcw, state.fpu.ftw, state.fpu.fsw),
            (0x37f, 0xffff, 0)
        );
        assert_eq!(state.fpu.mxcsr, 0x1f80);
        assert_eq!(state.vectors, Default::default());
        assert_eq!(
            state.pkru, 0,
            "PKRU is not held here, so it stays as it was"
        );
    }

    /// A Sapphire Rapids-style image: AVX-512 as above, PKRU at 0xa80, XTILECFG at 0xac0 and
    /// XTILEDATA at 0xb00 (CPUID.(EAX=0DH,ECX=17/18).EBX), 0x2b00 bytes (KVM_GET_XSAVE2's size
    /// once the VMM asked for AMX).
    fn amx_layout() -> XsaveLayout {
        let mut l = avx512_layout();
        l.size = 0x2b00;
        l.xcr0 = 0x602e7;
        l.offsets[9] = Some(0xa80);
        l.offsets[XTILECFG] = Some(0xac0);
        l.offsets[XTILEDATA] = Some(0xb00);
        l
    }

    #[test]
    fn amx_tile_state_round_trips_where_the_image_holds_it() {
        let layout = amx_layout();
        assert!(layout.holds(Field::TileCfg(3)) && layout.holds(Field::TileData(7, 63)));
        assert!(!avx512_layout().holds(Field::TileData(0, 0)));
        let mut state = VcpuState::default();
        state.vectors.xtilecfg[0] = 0x01; // palette 1
        state.vectors.xtilecfg[3] = 0x10 << 64;
        let (h, i) = vcpu_reset_spec::tile_word(7, 63);
        state.vectors.xtiledata[h][i] = u128::MAX;
        state.vectors.xtiledata[0][0] = 0x7a;

        let image = xsave_from_state(&state, &layout);

        assert_eq!(image.len(), 0x2b00);
        assert_eq!(u64_at(&image, XSTATE_BV), 0x602e7);
        assert_eq!(image[0xac0], 0x01, "palette at byte 0 of XTILECFG");
        assert_eq!(image[0xb00], 0x7a, "TMM0 row 0 at byte 0 of XTILEDATA");
        assert_eq!(
            u128_at(&image, 0xb00 + 8192 - 16, 16),
            u128::MAX,
            "TMM7's last bytes"
        );
        let mut back = VcpuState::default();
        xsave_to_state(&image, &layout, &mut back);
        assert_eq!(back.vectors, state.vectors);
    }

    #[test]
    fn zero_tile_state_is_written_as_the_initial_configuration() {
        let layout = amx_layout();
        let image = xsave_from_state(&VcpuState::default(), &layout);
        assert_eq!(
            u64_at(&image, XSTATE_BV),
            0x2e7,
            "XSTATE_BV[17] and [18] clear: the tiles' initial configuration"
        );
        let mut dirty = vec![0x5au8; 0x2b00];
        put(&mut dirty, XSTATE_BV, &0x2e7u64.to_le_bytes());
        let mut state = VcpuState::default();
        state.vectors.xtiledata[3][3] = 1;
        xsave_to_state(&dirty, &layout, &mut state);
        assert_eq!(state.vectors.xtilecfg, [0; 4]);
        assert!(state.vectors.xtiledata.iter().flatten().all(|w| *w == 0));
    }

    #[test]
    fn unheld_components_are_left_alone() {
        let layout = XsaveLayout {
            size: KVM_XSAVE_SIZE,
            xcr0: 3,
            offsets: [None; 19],
        };
        assert!(!layout.holds(Field::YmmHi(0)));
        assert!(layout.holds(Field::Xmm(0)));
        let image = xsave_from_state(&VcpuState::default(), &layout);
        assert_eq!(u64_at(&image, XSTATE_BV), 3);
        let mut state = VcpuState::default();
        state.vectors.ymm_hi[0] = 5;
        xsave_to_state(&image, &layout, &mut state);
        assert_eq!(state.vectors.ymm_hi[0], 5);
    }
}
