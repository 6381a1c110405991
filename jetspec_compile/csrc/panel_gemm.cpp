// An fp32 GEMM for the few rows a decode step has: y[M, N] = x[M, K] @ w[N, K]^T + b, with the weight
// packed once into panels of 16 output columns, [ceil(N / 16), K, 16] (zero-padded), so that a panel is one
// contiguous stream and a k step loads it as two AVX2 vectors.
//
// Why not a library GEMM: at decode shapes (M = 1..32 rows) MKL re-packs the weight on every call and
// oneDNN's prepacked GEMM is tuned for larger M. This kernel streams each panel once, holds R x P x 2
// accumulators in registers (R rows of x, P panels; R x P x 2 <= 12 of the 16 ymm registers), and
// prefetches the next panels into L2 while the first row block runs. Where a block of 12 panels exceeds L2
// (K >= 1366: real Qwen3 shapes), the row blocks take turns on chunks of 2 panels, so that the later ones
// still find them in L2 (verify rows 7-33 at Qwen3-0.6B's o_proj and down_proj: about 1.1x).
//
// Batch invariance: every output element is one FMA chain over k = 0..K-1 in order, then + bias, whatever
// M, the row blocking, the panel grouping or the thread split. Row i of linear(x) is therefore bitwise
// equal to linear(x[i:i+1]): a verify row equals the ar_step row of the same input.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

namespace jetspec {
bool panel_gemm_available() { return true; }

namespace {

constexpr int64_t NR = 16;  // output columns per panel: two ymm vectors
constexpr int64_t PB = 12;  // panels per parallel block (a multiple of every P below)
constexpr int64_t CHUNK = 2;  // panels per chunk where a parallel block's panels exceed L2 (K >= 1366)
constexpr int64_t L2_BYTES = int64_t(1) << 20;  // per core: 1 MiB on Zen 4 (and 1-2 MiB on recent Intel cores)

// P panels per micro-kernel call for R rows, so that each call keeps 8-12 independent FMA chains.
template <int R>
constexpr int panels_for_rows() { return R == 1 ? 4 : R == 2 ? 3 : R == 3 ? 2 : 1; }

struct Rows {
  const float* x;  // R rows of x, leading dimension K
  float* y;        // R rows of y, leading dimension N
};

struct Weight {
  const float* panels;  // [np, K, 16]
  const float* bias;    // [N] or null
  int64_t N, K, np;
};

template <int R, int P>
inline void micro(const Rows& rows, const Weight& w, int64_t p, const float* prefetch) {
  const int64_t K = w.K, ps = K * NR;
  const float* pw = w.panels + p * ps;
  __m256 acc[R][P][2];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int q = 0; q < P; ++q) acc[r][q][0] = acc[r][q][1] = _mm256_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    if (prefetch) {
#pragma GCC unroll 8
      for (int q = 0; q < P; ++q) _mm_prefetch(reinterpret_cast<const char*>(prefetch + q * ps + k * NR), _MM_HINT_T1);
    }
    __m256 b[P][2];
#pragma GCC unroll 8
    for (int q = 0; q < P; ++q) {
      b[q][0] = _mm256_loadu_ps(pw + q * ps + k * NR);
      b[q][1] = _mm256_loadu_ps(pw + q * ps + k * NR + 8);
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m256 a = _mm256_broadcast_ss(rows.x + r * K + k);
#pragma GCC unroll 8
      for (int q = 0; q < P; ++q) {
        acc[r][q][0] = _mm256_fmadd_ps(a, b[q][0], acc[r][q][0]);
        acc[r][q][1] = _mm256_fmadd_ps(a, b[q][1], acc[r][q][1]);
      }
    }
  }
  alignas(32) float tmp[NR];
#pragma GCC unroll 8
  for (int q = 0; q < P; ++q) {
    const int64_t c = (p + q) * NR, n = std::min(NR, w.N - c);
    if (n <= 0) continue;
    for (int j = 0; j < NR; ++j) tmp[j] = w.bias && j < n ? w.bias[c + j] : 0.f;
    const __m256 b0 = _mm256_load_ps(tmp), b1 = _mm256_load_ps(tmp + 8);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      float* out = rows.y + r * w.N + c;
      const __m256 v0 = _mm256_add_ps(acc[r][q][0], b0), v1 = _mm256_add_ps(acc[r][q][1], b1);
      if (n == NR) {
        _mm256_storeu_ps(out, v0);
        _mm256_storeu_ps(out + 8, v1);
      } else {
        _mm256_store_ps(tmp, v0);
        _mm256_store_ps(tmp + 8, v1);
        std::copy(tmp, tmp + n, out);
      }
    }
  }
}

// R rows against panels [p0, p1); the first row block also prefetches each call's next panels.
template <int R>
void row_block(const Rows& rows, const Weight& w, int64_t p0, int64_t p1, bool prefetch) {
  constexpr int P = panels_for_rows<R>();
  auto ahead = [&](int64_t p) { return prefetch && p + P <= w.np ? w.panels + p * w.K * NR : nullptr; };
  int64_t p = p0;
  for (; p + P <= p1; p += P) micro<R, P>(rows, w, p, ahead(p + P));
  for (; p < p1; ++p) micro<R, 1>(rows, w, p, ahead(p + 1));
}

void dispatch_rows(int64_t r, const Rows& rows, const Weight& w, int64_t p0, int64_t p1, bool prefetch) {
  switch (r) {
    case 1: return row_block<1>(rows, w, p0, p1, prefetch);
    case 2: return row_block<2>(rows, w, p0, p1, prefetch);
    case 3: return row_block<3>(rows, w, p0, p1, prefetch);
    case 4: return row_block<4>(rows, w, p0, p1, prefetch);
    case 5: return row_block<5>(rows, w, p0, p1, prefetch);
    default: return row_block<6>(rows, w, p0, p1, prefetch);
  }
}

}  // namespace

// [N, K] fp32 -> [ceil(N / 16), K, 16] panels, zero-padded past N.
at::Tensor pack_panels(const at::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == at::kFloat, "pack_panels: expected a 2-D fp32 weight");
  const at::Tensor w = weight.contiguous();
  const int64_t N = w.size(0), K = w.size(1), np = (N + NR - 1) / NR;
  at::Tensor packed = at::zeros({np, K, NR}, w.options());
  const float* src = w.data_ptr<float>();
  float* dst = packed.data_ptr<float>();
  at::parallel_for(0, np, 1, [&](int64_t s, int64_t e) {
    for (int64_t p = s; p < e; ++p)
      for (int64_t j = 0; j < NR && p * NR + j < N; ++j) {
        const float* row = src + (p * NR + j) * K;
        float* col = dst + p * K * NR + j;
        for (int64_t k = 0; k < K; ++k) col[k * NR] = row[k];
      }
  });
  return packed;
}

// x [..., K] fp32 times a weight packed by pack_panels (N output columns), plus an optional bias [N].
at::Tensor panel_linear(const at::Tensor& x_, const at::Tensor& packed, int64_t N, const std::optional<at::Tensor>& b) {
  const at::Tensor x = x_.reshape({-1, x_.size(-1)}).contiguous();
  const int64_t M = x.size(0), K = x.size(1), np = packed.size(0);
  TORCH_CHECK(packed.size(1) == K && np * NR >= N, "panel_linear: the packed weight does not match x");
  const at::Tensor bias = b && b->defined() ? b->contiguous() : at::Tensor();
  at::Tensor y = at::empty({M, N}, x.options());
  const Weight w{packed.data_ptr<float>(), bias.defined() ? bias.data_ptr<float>() : nullptr, N, K, np};
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const int64_t blocks = (M + 5) / 6;  // balanced row blocks of at most 6 rows
  // Row blocks after the first re-read the panels the first one streamed in. A group of PB panels larger than
  // L2 would be gone by then, so each chunk of a few panels is run by every row block in turn instead.
  const int64_t chunk = blocks > 1 && PB * K * NR * int64_t(sizeof(float)) > L2_BYTES ? CHUNK : PB;
  at::parallel_for(0, (np + PB - 1) / PB, 1, [&](int64_t s, int64_t e) {
    for (int64_t pb = s; pb < e; ++pb) {
      const int64_t p1 = std::min(np, (pb + 1) * PB);
      for (int64_t c0 = pb * PB; c0 < p1; c0 += chunk) {
        for (int64_t i = 0, m = 0; i < blocks; ++i) {
          const int64_t r = (M - m + blocks - i - 1) / (blocks - i);
          dispatch_rows(r, Rows{xp + m * K, yp + m * N}, w, c0, std::min(p1, c0 + chunk), i == 0);
          m += r;
        }
      }
    }
  });
  std::vector<int64_t> shape(x_.sizes().begin(), x_.sizes().end());
  shape.back() = N;
  return y.view(shape);
}

}  // namespace jetspec

#else  // without AVX2 + FMA, jetspec::linear keeps oneDNN's prepacked GEMM

namespace jetspec {
bool panel_gemm_available() { return false; }
at::Tensor pack_panels(const at::Tensor&) { TORCH_CHECK(false, "pack_panels needs AVX2 + FMA"); }
at::Tensor panel_linear(const at::Tensor&, const at::Tensor&, int64_t, const std::optional<at::Tensor>&) {
  TORCH_CHECK(false, "panel_linear needs AVX2 + FMA");
}
}  // namespace jetspec

#endif
