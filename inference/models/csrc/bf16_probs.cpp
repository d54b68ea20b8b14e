// Attention probabilities of bfloat16 queries and keys: float32 scores and softmax, bfloat16 out, on
// AVX512-BF16 CPUs.
//
// The DiT's CPU attention needs float32 scores (bfloat16 ones lose the softmax's precision) from bfloat16
// q and k. CPU torch has no bfloat16 x bfloat16 -> float32 batched matmul, so the direct path converts q and
// k to float32, multiplies at the float32 rate (about half the bfloat16 one), writes the float32 scores out
// and reads them back for the softmax. This op multiplies the bfloat16 values themselves with VDPBF16PS
// (pairs of bf16 products summed into float32 lanes: the same exact products as the float32 path, summed in
// another order), adds the scale and key bias, and takes each row's softmax while the row's scores are still
// in the L1 cache, storing only the probabilities, rounded to bfloat16 as the direct path rounds them for the
// p v product.
//
//   lingbot_cpu::bf16_probs(q (B, Lq, H, D) bf16, k (B, Lk, H, D) bf16, bias (B, Lk) float32 or None, scale)
//     -> (B*H, Lq, Lk) bf16 = softmax(scale * q k^T + bias) over keys

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <vector>

namespace {

constexpr int64_t kLanes = 16;    // float32 scores per vector: one block of keys
constexpr int64_t kVectors = 4;   // key blocks per tile (64 keys)
constexpr int64_t kRows = 6;      // query rows per tile: 6 x 4 accumulators + 4 key vectors fit the 32 registers
constexpr int64_t kTileKeys = kLanes * kVectors;

// Keys (Lk, D), rows `ld` apart -> blocks of 16 keys, each D/2 pairs of (16 keys x 2 dims), zeros past Lk:
// the layout VDPBF16PS reads (one 512-bit load gives a dim pair of 16 keys). A dim pair is 32 bits, so a
// block is a 16 x D/2 transpose of 32-bit values.
void pack_keys(const uint16_t* k, int64_t ld, int64_t keys, int64_t dim, uint16_t* out) {
  const int64_t pairs = dim / 2;
  for (int64_t first = 0; first < keys; first += kLanes) {
    uint32_t* dst = reinterpret_cast<uint32_t*>(out + first * dim);
    const int64_t n = std::min(kLanes, keys - first);
    for (int64_t j = 0; j < n; ++j) {
      const uint16_t* row = k + (first + j) * ld;
      for (int64_t p = 0; p < pairs; ++p) {
        uint32_t pair;
        std::memcpy(&pair, row + 2 * p, sizeof(pair));
        dst[p * kLanes + j] = pair;
      }
    }
    for (int64_t j = n; j < kLanes; ++j)
      for (int64_t p = 0; p < pairs; ++p) dst[p * kLanes + j] = 0;
  }
}

// One tile: M query rows x up to 64 keys (`cols` of them stored), out = scale * q k^T + bias.
template <int M>
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void tile(
    const uint16_t* q, int64_t ldq, const uint16_t* keys, int64_t dim, float* out, int64_t ldo,
    const float* bias, float scale, int64_t cols) {
  __m512 acc[M][kVectors];
  for (int r = 0; r < M; ++r)
    for (int v = 0; v < kVectors; ++v) acc[r][v] = _mm512_setzero_ps();
  const int64_t block = kLanes * dim;  // elements of one packed key block
  for (int64_t p = 0; p < dim / 2; ++p) {
    __m512bh b[kVectors];
    for (int v = 0; v < kVectors; ++v)
      b[v] = (__m512bh)_mm512_loadu_si512(keys + v * block + p * 2 * kLanes);
    for (int r = 0; r < M; ++r) {
      uint32_t pair;
      std::memcpy(&pair, q + r * ldq + 2 * p, sizeof(pair));
      const __m512bh a = (__m512bh)_mm512_set1_epi32(static_cast<int>(pair));
      for (int v = 0; v < kVectors; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], a, b[v]);
    }
  }
  const __m512 factor = _mm512_set1_ps(scale);
  for (int v = 0; v < kVectors; ++v) {
    const int64_t first = v * kLanes;
    if (first >= cols) break;
    const __mmask16 mask = cols - first >= kLanes ? __mmask16(0xFFFF) : __mmask16((1u << (cols - first)) - 1);
    const __m512 add = bias ? _mm512_maskz_loadu_ps(mask, bias + first) : _mm512_setzero_ps();
    for (int r = 0; r < M; ++r)
      _mm512_mask_storeu_ps(out + r * ldo + first, mask, _mm512_fmadd_ps(acc[r][v], factor, add));
  }
}

using TileFn = void (*)(const uint16_t*, int64_t, const uint16_t*, int64_t, float*, int64_t, const float*,
                        float, int64_t);
constexpr TileFn kTiles[kRows + 1] = {nullptr, tile<1>, tile<2>, tile<3>, tile<4>, tile<5>, tile<6>};

constexpr float kExpFloor = -87.3f;  // below, exp() is under float32's smallest normal: taken as 0

// exp(x) for x <= 0 (scores minus their row's maximum): 2^n * exp(r), r = x - n ln2 in [-ln2/2, ln2/2], exp(r)
// by the degree-6 polynomial of the Cephes single-precision exp (~1 ulp); 0 below kExpFloor and for -inf.
__attribute__((target("avx512f"))) inline __m512 exp_nonpositive(__m512 x) {
  const __mmask16 live = _mm512_cmp_ps_mask(x, _mm512_set1_ps(kExpFloor), _CMP_GE_OQ);
  x = _mm512_max_ps(x, _mm512_set1_ps(kExpFloor));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  const __m512 y = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r), _mm512_set1_ps(1.0f));
  return _mm512_maskz_mov_ps(live, _mm512_scalef_ps(y, n));
}

inline __mmask16 lanes(int64_t left) {
  return left >= kLanes ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
}

// One row of float32 scores -> its softmax, rounded to bfloat16 into `out`.
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) void softmax_row(float* row, int64_t keys,
                                                                                   uint16_t* out) {
  __m512 top = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t j = 0; j < keys; j += kLanes)
    top = _mm512_mask_max_ps(top, lanes(keys - j), top, _mm512_maskz_loadu_ps(lanes(keys - j), row + j));
  const __m512 peak = _mm512_set1_ps(_mm512_reduce_max_ps(top));
  __m512 total = _mm512_setzero_ps();
  for (int64_t j = 0; j < keys; j += kLanes) {
    const __mmask16 m = lanes(keys - j);
    const __m512 e = _mm512_maskz_mov_ps(m, exp_nonpositive(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, row + j), peak)));
    _mm512_mask_storeu_ps(row + j, m, e);
    total = _mm512_add_ps(total, e);
  }
  const __m512 inverse = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(total));
  for (int64_t j = 0; j < keys; j += kLanes) {
    const __mmask16 m = lanes(keys - j);
    const __m256bh probs = _mm512_cvtneps_pbh(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, row + j), inverse));
    _mm256_mask_storeu_epi16(out + j, m, (__m256i)probs);
  }
}

at::Tensor bf16_probs(const at::Tensor& q, const at::Tensor& k, const std::optional<at::Tensor>& bias,
                      double scale) {
  TORCH_CHECK(q.device().is_cpu() && k.device().is_cpu(), "bf16_probs: CPU tensors only");
  TORCH_CHECK(q.scalar_type() == at::kBFloat16 && k.scalar_type() == at::kBFloat16,
              "bf16_probs: q and k must be bfloat16");
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4, "bf16_probs: q and k must be (B, L, heads, head_dim)");
  const int64_t batch = q.size(0), queries = q.size(1), heads = q.size(2), dim = q.size(3), keys = k.size(1);
  TORCH_CHECK(k.size(0) == batch && k.size(2) == heads && k.size(3) == dim,
              "bf16_probs: k must match q's batch, heads and head_dim");
  TORCH_CHECK(dim % 2 == 0 && keys > 0, "bf16_probs: head_dim must be even and keys at least one");
  TORCH_CHECK(q.stride(3) == 1 && k.stride(3) == 1, "bf16_probs: head_dim must be contiguous");
  const float* bias_data = nullptr;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->dim() == 2 && bias->size(0) == batch &&
                    bias->size(1) == keys && bias->is_contiguous(),
                "bf16_probs: bias must be a contiguous float32 (B, Lk)");
    bias_data = bias->data_ptr<float>();
  }
  auto out = at::empty({batch * heads, queries, keys}, q.options());
  const int64_t tiles = (keys + kTileKeys - 1) / kTileKeys;
  const int64_t padded = tiles * kTileKeys;
  auto packed = at::empty({batch * heads, padded * dim}, k.options());
  const auto* qd = reinterpret_cast<const uint16_t*>(q.data_ptr());
  const auto* kd = reinterpret_cast<const uint16_t*>(k.data_ptr());
  auto* pd = reinterpret_cast<uint16_t*>(packed.data_ptr());
  auto* od = reinterpret_cast<uint16_t*>(out.data_ptr());
  const float factor = static_cast<float>(scale);
  // 1. every (item, head, tile of 64 keys) packed, zeros past the last key
  at::parallel_for(0, batch * heads * tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t index = begin; index < end; ++index) {
      const int64_t bh = index / tiles, col = index % tiles * kTileKeys;
      const int64_t b = bh / heads, h = bh % heads;
      const int64_t cols = std::min(kTileKeys, keys - col);
      const int64_t filled = (cols + kLanes - 1) / kLanes * kLanes;
      uint16_t* tile_keys = pd + bh * padded * dim + col * dim;
      pack_keys(kd + b * k.stride(0) + col * k.stride(1) + h * k.stride(2), k.stride(1), cols, dim, tile_keys);
      std::memset(tile_keys + filled * dim, 0, (kTileKeys - filled) * dim * sizeof(uint16_t));
    }
  });
  // 2. every (item, head, 6 query rows): their scores over all keys into a per-thread buffer, then each row's
  // softmax from it
  const int64_t row_tiles = (queries + kRows - 1) / kRows;
  at::parallel_for(0, batch * heads * row_tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> buffer(kRows * padded);
    for (int64_t index = begin; index < end; ++index) {
      const int64_t bh = index / row_tiles, row = index % row_tiles * kRows;
      const int64_t b = bh / heads, h = bh % heads;
      const int64_t rows = std::min(kRows, queries - row);
      const uint16_t* qt = qd + b * q.stride(0) + row * q.stride(1) + h * q.stride(2);
      for (int64_t col = 0; col < keys; col += kTileKeys) {
        kTiles[rows](qt, q.stride(1), pd + bh * padded * dim + col * dim, dim, buffer.data() + col, padded,
                     bias_data ? bias_data + b * keys + col : nullptr, factor, std::min(kTileKeys, keys - col));
      }
      for (int64_t r = 0; r < rows; ++r)
        softmax_row(buffer.data() + r * padded, keys, od + (bh * queries + row + r) * keys);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(lingbot_cpu, m) {
  m.def("bf16_probs(Tensor q, Tensor k, Tensor? bias, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(lingbot_cpu, CPU, m) {
  m.impl("bf16_probs", bf16_probs);
}
