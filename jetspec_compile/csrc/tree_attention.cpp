// Native CPU kernel of jetspec::tree_attention, registered with the dispatcher in C++ so that
// AOTInductor-compiled graphs call it without the Python interpreter.
//
// The queries of T new rows attend to the committed cache prefix [0, cache_len) (always visible, read
// in place, no copy) plus the new rows' own keys under a boolean mask [T, Tk]. The query heads of one
// KV group share each K/V tile (GQA without repeated K/V). Flash-attention style: key tiles of
// kKeyTile rows, fp32 online softmax, fp32 accumulation for fp32/fp16/bf16 inputs; AVX2+FMA dot products
// score blocks, vectorised exp and P.V updates where the compiler targets AVX2 (portable loops elsewhere). A query row that sees no key returns zeros.
//
// Layouts (see jetspec_compile/ops.py): q [Hq, T, hd], k/v [Hkv, Tk, hd], k_cache/v_cache [Hkv, S, hd],
// cache_len int64 [1], mask bool [T, Tk], out [T, Hq, hd] contiguous. Any strides but a unit last one.

#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define JETSPEC_AVX2 1
#endif

namespace {

constexpr int64_t kKeyTile = 64;    // keys per tile (scores of one tile stay in L1)
constexpr int64_t kQueryTile = 16;  // query rows per task (their accumulators stay in L1)
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

#ifdef JETSPEC_AVX2
inline float hsum(__m256 v) {
  __m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  return _mm_cvtss_f32(_mm_add_ss(lo, _mm_shuffle_ps(lo, lo, 1)));
}

inline float hmax(__m256 v) {
  __m128 lo = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  lo = _mm_max_ps(lo, _mm_movehl_ps(lo, lo));
  return _mm_cvtss_f32(_mm_max_ss(lo, _mm_shuffle_ps(lo, lo, 1)));
}

// exp(x) for 8 floats (Cephes polynomial, ~1 ulp); exp(-inf) and exp(x < -88.4) are exactly 0.
inline __m256 exp8(__m256 x) {
  x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.3762626647949f)), _mm256_set1_ps(-88.3762626647949f));
  __m256 fx = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500E-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507E-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073E-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894E-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459E-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201E-1f));
  y = _mm256_add_ps(_mm256_fmadd_ps(y, _mm256_mul_ps(x, x), x), _mm256_set1_ps(1.f));
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

// The 8 dot products q . k[j] (j < 8) as one vector, hd a multiple of 8.
inline __m256 dot8(const float* q, const float* const* k, int64_t hd) {
  __m256 a[8];
  for (int j = 0; j < 8; ++j) a[j] = _mm256_setzero_ps();
  for (int64_t d = 0; d < hd; d += 8) {
    const __m256 qv = _mm256_loadu_ps(q + d);
    for (int j = 0; j < 8; ++j) a[j] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k[j] + d), a[j]);
  }
  const __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
  const __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}
#endif

inline float dot(const float* a, const float* b, int64_t n) {
  float s = 0.f;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

// scores[j] = q . k[j] for j < nk.
inline void scores_row(const float* q, const float* const* k, int64_t nk, int64_t hd, float* out) {
  int64_t j = 0;
#ifdef JETSPEC_AVX2
  if (hd % 8 == 0)
    for (; j + 8 <= nk; j += 8) _mm256_storeu_ps(out + j, dot8(q, k + j, hd));
#endif
  for (; j < nk; ++j) out[j] = dot(q, k[j], hd);
}

#ifdef JETSPEC_AVX2
// The 4 sums of a0..a3, in order, as one 128-bit vector.
inline __m128 sum4(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
  const __m256 u = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
  return _mm_add_ps(_mm256_castps256_ps128(u), _mm256_extractf128_ps(u, 1));
}
#endif

// Two query rows at once: s0[j] = q0 . k[j] and s1[j] = q1 . k[j] for j < nk. Each K row loaded serves
// both rows, and 2 rows x 4 keys keep 8 independent FMA chains in flight.
inline void scores_rows2(const float* q0, const float* q1, const float* const* k, int64_t nk, int64_t hd,
                         float* s0, float* s1) {
  int64_t j = 0;
#ifdef JETSPEC_AVX2
  if (hd % 8 == 0)
    for (; j + 4 <= nk; j += 4) {
      __m256 a[8];
      for (int i = 0; i < 8; ++i) a[i] = _mm256_setzero_ps();
      for (int64_t d = 0; d < hd; d += 8) {
        const __m256 x0 = _mm256_loadu_ps(q0 + d), x1 = _mm256_loadu_ps(q1 + d);
        for (int c = 0; c < 4; ++c) {
          const __m256 kv = _mm256_loadu_ps(k[j + c] + d);
          a[c] = _mm256_fmadd_ps(x0, kv, a[c]);
          a[4 + c] = _mm256_fmadd_ps(x1, kv, a[4 + c]);
        }
      }
      _mm_storeu_ps(s0 + j, sum4(a[0], a[1], a[2], a[3]));
      _mm_storeu_ps(s1 + j, sum4(a[4], a[5], a[6], a[7]));
    }
#endif
  for (; j < nk; ++j) {
    s0[j] = dot(q0, k[j], hd);
    s1[j] = dot(q1, k[j], hd);
  }
}

// s[j] = exp(s[j] - m) in place; returns the sum.
inline float exp_sum(float* s, int64_t n, float m) {
  int64_t j = 0;
  float sum = 0.f;
#ifdef JETSPEC_AVX2
  const __m256 vm = _mm256_set1_ps(m);
  __m256 acc = _mm256_setzero_ps();
  for (; j + 8 <= n; j += 8) {
    const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + j), vm));
    _mm256_storeu_ps(s + j, e);
    acc = _mm256_add_ps(acc, e);
  }
  sum = hsum(acc);
#endif
  for (; j < n; ++j) {
    s[j] = std::exp(s[j] - m);
    sum += s[j];
  }
  return sum;
}

inline float row_max(const float* s, int64_t n) {
  int64_t j = 0;
  float m = kNegInf;
#ifdef JETSPEC_AVX2
  __m256 vm = _mm256_set1_ps(kNegInf);
  for (; j + 8 <= n; j += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(s + j));
  m = hmax(vm);
#endif
  for (; j < n; ++j) m = std::max(m, s[j]);
  return m;
}

// acc[0:hd] += sum_j p[j] * v[j][0:hd] (the odd row left over by accumulate2)
inline void accumulate(float* acc, const float* p, const float* const* v, int64_t nk, int64_t hd) {
  int64_t d = 0;
#ifdef JETSPEC_AVX2
  for (; d + 32 <= hd; d += 32) {
    __m256 a0 = _mm256_loadu_ps(acc + d), a1 = _mm256_loadu_ps(acc + d + 8);
    __m256 a2 = _mm256_loadu_ps(acc + d + 16), a3 = _mm256_loadu_ps(acc + d + 24);
    for (int64_t j = 0; j < nk; ++j) {
      const __m256 pj = _mm256_set1_ps(p[j]);
      const float* vr = v[j] + d;
      a0 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vr), a0);
      a1 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vr + 8), a1);
      a2 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vr + 16), a2);
      a3 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vr + 24), a3);
    }
    _mm256_storeu_ps(acc + d, a0);
    _mm256_storeu_ps(acc + d + 8, a1);
    _mm256_storeu_ps(acc + d + 16, a2);
    _mm256_storeu_ps(acc + d + 24, a3);
  }
#endif
  for (; d < hd; ++d) {
    float a = acc[d];
    for (int64_t j = 0; j < nk; ++j) a += p[j] * v[j][d];
    acc[d] = a;
  }
}

// Two rows at once: acc0 += sum_j p0[j] * v[j] and acc1 += sum_j p1[j] * v[j]. Each V row loaded serves
// both rows, and 2 rows x 32 columns keep 8 independent FMA chains in flight (one row's 4 chains would
// wait on the FMA latency).
inline void accumulate2(float* acc0, float* acc1, const float* p0, const float* p1, const float* const* v,
                        int64_t nk, int64_t hd) {
  int64_t d = 0;
#ifdef JETSPEC_AVX2
  for (; d + 32 <= hd; d += 32) {
    __m256 a[8];
    for (int c = 0; c < 4; ++c) {
      a[c] = _mm256_loadu_ps(acc0 + d + 8 * c);
      a[4 + c] = _mm256_loadu_ps(acc1 + d + 8 * c);
    }
    for (int64_t j = 0; j < nk; ++j) {
      const __m256 w0 = _mm256_set1_ps(p0[j]), w1 = _mm256_set1_ps(p1[j]);
      const float* vr = v[j] + d;
      for (int c = 0; c < 4; ++c) {
        const __m256 vv = _mm256_loadu_ps(vr + 8 * c);
        a[c] = _mm256_fmadd_ps(w0, vv, a[c]);
        a[4 + c] = _mm256_fmadd_ps(w1, vv, a[4 + c]);
      }
    }
    for (int c = 0; c < 4; ++c) {
      _mm256_storeu_ps(acc0 + d + 8 * c, a[c]);
      _mm256_storeu_ps(acc1 + d + 8 * c, a[4 + c]);
    }
  }
#endif
  for (; d < hd; ++d) {
    float x0 = acc0[d], x1 = acc1[d];
    for (int64_t j = 0; j < nk; ++j) {
      x0 += p0[j] * v[j][d];
      x1 += p1[j] * v[j][d];
    }
    acc0[d] = x0;
    acc1[d] = x1;
  }
}

// Row pointers of a K or V tile as fp32: direct for float, converted into `buf` otherwise.
template <typename T>
void tile_rows(const T* base, int64_t stride, int64_t j0, int64_t nk, int64_t hd, float* buf, const float** rows) {
  for (int64_t j = 0; j < nk; ++j) {
    const T* src = base + (j0 + j) * stride;
    if constexpr (std::is_same_v<T, float>) {
      rows[j] = src;
    } else {
      float* dst = buf + j * hd;
      for (int64_t i = 0; i < hd; ++i) dst[i] = static_cast<float>(src[i]);
      rows[j] = dst;
    }
  }
}

struct Dims {
  int64_t hq, hkv, group, t, tk, hd, n;
  float scale;
};

// One KV head, query rows [r0, r1) of its group (row r = gi * T + t  ->  query head h * group + gi).
template <typename T>
void attend_tile(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& kc,
                 const at::Tensor& vc, const bool* mask, int64_t mask_stride, float* out, const Dims& d,
                 int64_t h, int64_t r0, int64_t r1) {
  const int64_t nr = r1 - r0, hd = d.hd;
  std::vector<float> qbuf(nr * hd), acc(nr * hd, 0.f), scores(nr * kKeyTile), kbuf, vbuf;
  if constexpr (!std::is_same_v<T, float>) {
    kbuf.resize(kKeyTile * hd);
    vbuf.resize(kKeyTile * hd);
  }
  std::vector<float> m(nr, kNegInf), l(nr, 0.f);
  std::vector<int64_t> trow(nr);
  const float* krows[kKeyTile];
  const float* vrows[kKeyTile];
  const T* qp = q.data_ptr<T>();
  for (int64_t i = 0; i < nr; ++i) {
    const int64_t r = r0 + i, gi = r / d.t, t = r % d.t;
    trow[i] = t;
    const T* src = qp + (h * d.group + gi) * q.stride(0) + t * q.stride(1);
    for (int64_t j = 0; j < hd; ++j) qbuf[i * hd + j] = static_cast<float>(src[j]) * d.scale;
  }

  // One tile of keys [j0, j0 + nk) of (kbase, vbase); `masked`: new rows, visible per the mask.
  auto run_tile = [&](const T* kbase, int64_t ks, const T* vbase, int64_t vs, int64_t j0, int64_t nk, bool masked) {
    tile_rows<T>(kbase, ks, j0, nk, hd, kbuf.data(), krows);
    bool any_visible = false;
    int64_t i2 = 0;
    for (; i2 + 2 <= nr; i2 += 2)
      scores_rows2(qbuf.data() + i2 * hd, qbuf.data() + (i2 + 1) * hd, krows, nk, hd,
                   scores.data() + i2 * kKeyTile, scores.data() + (i2 + 1) * kKeyTile);
    if (i2 < nr) scores_row(qbuf.data() + i2 * hd, krows, nk, hd, scores.data() + i2 * kKeyTile);
    for (int64_t i = 0; i < nr; ++i) {
      float* s = scores.data() + i * kKeyTile;
      if (masked) {
        const bool* mrow = mask + trow[i] * mask_stride + j0;
        for (int64_t j = 0; j < nk; ++j)
          if (!mrow[j]) s[j] = kNegInf;
      }
      const float tile_max = row_max(s, nk);
      if (tile_max == kNegInf) {  // this row sees nothing in the tile
        std::fill(s, s + nk, 0.f);
        continue;
      }
      const float new_m = std::max(m[i], tile_max);
      const float c = std::exp(m[i] - new_m);  // 0 on the row's first visible tile
      l[i] = l[i] * c + exp_sum(s, nk, new_m);
      m[i] = new_m;
      float* a = acc.data() + i * hd;
      for (int64_t j = 0; j < hd; ++j) a[j] *= c;
      any_visible = true;
    }
    if (!any_visible) return;
    tile_rows<T>(vbase, vs, j0, nk, hd, vbuf.data(), vrows);
    int64_t i = 0;
    for (; i + 2 <= nr; i += 2)
      accumulate2(acc.data() + i * hd, acc.data() + (i + 1) * hd, scores.data() + i * kKeyTile,
                  scores.data() + (i + 1) * kKeyTile, vrows, nk, hd);
    if (i < nr) accumulate(acc.data() + i * hd, scores.data() + i * kKeyTile, vrows, nk, hd);
  };

  const T* kcb = kc.data_ptr<T>() + h * kc.stride(0);
  const T* vcb = vc.data_ptr<T>() + h * vc.stride(0);
  const T* knb = k.data_ptr<T>() + h * k.stride(0);
  const T* vnb = v.data_ptr<T>() + h * v.stride(0);
  for (int64_t j0 = 0; j0 < d.n; j0 += kKeyTile)  // the committed prefix: every key visible
    run_tile(kcb, kc.stride(1), vcb, vc.stride(1), j0, std::min(kKeyTile, d.n - j0), false);
  for (int64_t j0 = 0; j0 < d.tk; j0 += kKeyTile)  // the new rows, under the mask
    run_tile(knb, k.stride(1), vnb, v.stride(1), j0, std::min(kKeyTile, d.tk - j0), true);

  for (int64_t i = 0; i < nr; ++i) {
    const int64_t r = r0 + i, gi = r / d.t, t = r % d.t;
    float* o = out + (t * d.hq + h * d.group + gi) * hd;
    const float inv = l[i] > 0.f ? 1.f / l[i] : 0.f;
    for (int64_t j = 0; j < hd; ++j) o[j] = acc[i * hd + j] * inv;
  }
}

at::Tensor unit_last(const at::Tensor& x) { return x.stride(-1) == 1 ? x : x.contiguous(); }

at::Tensor tree_attention_cpu(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                              const at::Tensor& kc_in, const at::Tensor& vc_in, const at::Tensor& cache_len,
                              const at::Tensor& mask_in, double scale) {
  TORCH_CHECK(q_in.dim() == 3 && k_in.dim() == 3 && v_in.dim() == 3 && kc_in.dim() == 3 && vc_in.dim() == 3,
              "jetspec::tree_attention: q, k, v, k_cache, v_cache must be 3-D [heads, rows, head_dim]");
  const auto dtype = q_in.scalar_type();
  for (const auto* x : {&k_in, &v_in, &kc_in, &vc_in})
    TORCH_CHECK(x->scalar_type() == dtype, "jetspec::tree_attention: q, k, v and the caches must share a dtype");
  const int64_t hq = q_in.size(0), t = q_in.size(1), hd = q_in.size(2);
  const int64_t hkv = k_in.size(0), tk = k_in.size(1), S = kc_in.size(1);
  TORCH_CHECK(hkv > 0 && hq % hkv == 0, "jetspec::tree_attention: query heads ", hq,
              " are not a multiple of KV heads ", hkv);
  TORCH_CHECK(v_in.sizes() == k_in.sizes() && k_in.size(2) == hd, "jetspec::tree_attention: k/v shape mismatch");
  TORCH_CHECK(kc_in.size(0) == hkv && kc_in.size(2) == hd && vc_in.sizes() == kc_in.sizes(),
              "jetspec::tree_attention: cache shape mismatch");
  TORCH_CHECK(mask_in.dim() == 2 && mask_in.size(0) == t && mask_in.size(1) == tk,
              "jetspec::tree_attention: mask must be [T, Tk] = [", t, ", ", tk, "]");
  TORCH_CHECK(cache_len.numel() >= 1, "jetspec::tree_attention: cache_len is empty");
  const int64_t n = cache_len.reshape({-1}).to(at::kLong).data_ptr<int64_t>()[0];
  TORCH_CHECK(n >= 0 && n <= S, "jetspec::tree_attention: cache_len ", n, " is outside [0, ", S, "]");

  const at::Tensor q = unit_last(q_in), k = unit_last(k_in), v = unit_last(v_in);
  const at::Tensor kc = unit_last(kc_in), vc = unit_last(vc_in);
  const at::Tensor mask = mask_in.to(at::kBool).contiguous();
  at::Tensor out32 = at::empty({t, hq, hd}, q_in.options().dtype(at::kFloat));
  const Dims d{hq, hkv, hq / hkv, t, tk, hd, n, static_cast<float>(scale)};
  const int64_t rows = d.group * t, tiles = (rows + kQueryTile - 1) / kQueryTile;
  const bool* mp = mask.data_ptr<bool>();
  float* op = out32.data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "jetspec_tree_attention", [&] {
    at::parallel_for(0, hkv * tiles, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t h = task / tiles, r0 = (task % tiles) * kQueryTile;
        attend_tile<scalar_t>(q, k, v, kc, vc, mp, tk, op, d, h, r0, std::min(r0 + kQueryTile, rows));
      }
    });
  });
  return dtype == at::kFloat ? out32 : out32.to(dtype);
}

}  // namespace

TORCH_LIBRARY(jetspec, m) {
  m.def("tree_attention(Tensor q, Tensor k, Tensor v, Tensor k_cache, Tensor v_cache, Tensor cache_len, "
        "Tensor mask, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(jetspec, CPU, m) { m.impl("tree_attention", &tree_attention_cpu); }
