/* One hop of the cumulative ACT loop's bookkeeping, fused into a single pass over
 * the hop's state (ponderlab/plugins/halting/fused_act.py loads this file).
 *
 * For each token it computes the linear halting unit h = sigmoid(w . s + b), updates
 * the running sum c, the remainder and the hop count, picks the token's weight p
 * and adds p * s to the output row, while the state row is in cache. The eager loop
 * (common.py, cumulative_halting_loop) is the reference: it reads each state twice
 * (the unit, then the weighted sum) and runs about a dozen small ops per hop.
 *
 * Tokens form an (n0, n1) grid; every array is addressed through its own strides
 * (in elements), and a state or output row is `width` contiguous elements. Per-token
 * arrays: c (total), 1 - c (remaining), N (hops), R (remainder), this hop's weight p
 * and running (0/1). `step` is the 0-based index of this hop. Modes: FIRST
 * initialises them (`keep` 0 marks padding, which halts now with weight 1); MIDDLE
 * continues; CAP gives every running token its remainder. A token that halts gets
 * N = step + 1 and R = p. Halted tokens are skipped: their weight is 0 and their
 * output row stays as it is. Returns how many tokens still run.
 */
#include <math.h>
#include <stdint.h>

enum { FIRST = 0, MIDDLE = 1, CAP = 2 };

#define DEFINE_ACT_HOP(NAME, T, EXP)                                                     \
    int64_t NAME(const T *state, int64_t state0, int64_t state1,                         \
                 T *output, int64_t output0, int64_t output1,                            \
                 int64_t n0, int64_t n1, int64_t width,                                  \
                 const T *unit_weight, double unit_bias, double threshold,               \
                 T *total, T *remaining, T *hops, T *remainder, T *weight,               \
                 uint8_t *running, int64_t token0, int64_t token1,                        \
                 const uint8_t *keep, int64_t step, int mode) {                           \
        const T bias = (T)unit_bias, limit = (T)threshold;                               \
        int64_t count = 0;                                                               \
        for (int64_t i = 0; i < n0; ++i) {                                               \
            for (int64_t j = 0; j < n1; ++j) {                                           \
                const int64_t t = i * token0 + j * token1;                               \
                const T *row = state + i * state0 + j * state1;                          \
                T *acc = output + i * output0 + j * output1;                             \
                if (mode != FIRST && !running[t]) {                                      \
                    weight[t] = 0;                                                       \
                    continue;                                                            \
                }                                                                        \
                T p;                                                                     \
                if (mode == CAP) {                                                       \
                    p = remaining[t];                                                    \
                    running[t] = 0;                                                      \
                } else {                                                                 \
                    T dot = 0;                                                           \
                    for (int64_t d = 0; d < width; ++d) dot += row[d] * unit_weight[d];  \
                    const T h = (T)1 / ((T)1 + EXP(-(dot + bias)));                      \
                    const int padding = mode == FIRST && keep && !keep[t];               \
                    const T c = mode == FIRST ? h : total[t] + h;                        \
                    const int goes_on = !padding && c < limit;                           \
                    const T before = mode == FIRST ? (T)1 : remaining[t];                \
                    p = goes_on ? h : before; /* R = 1 - c_{n-1} at the halting hop */    \
                    total[t] = c;                                                        \
                    remaining[t] = goes_on ? (T)1 - c : (T)0;                            \
                    running[t] = (uint8_t)goes_on;                                       \
                    count += goes_on;                                                    \
                }                                                                        \
                weight[t] = p;                                                           \
                if (!running[t]) {                                                       \
                    hops[t] = (T)(step + 1);                                             \
                    remainder[t] = p;                                                    \
                }                                                                        \
                if (mode == FIRST)                                                       \
                    for (int64_t d = 0; d < width; ++d) acc[d] = p * row[d];             \
                else                                                                     \
                    for (int64_t d = 0; d < width; ++d) acc[d] += p * row[d];            \
            }                                                                            \
        }                                                                                \
        return count;                                                                    \
    }

DEFINE_ACT_HOP(ponderlab_act_hop_f32, float, expf)
DEFINE_ACT_HOP(ponderlab_act_hop_f64, double, exp)

/* The gradient of one loop's bookkeeping, given the hops' states and the forward's
 * per-hop weights p_n and hop counts N. For a token halting at hop L = N - 1:
 *   y = sum_{n<=L} p_n s_n, p_n = h_n (n < L), p_L = R = 1 - sum_{n<L} h_n,
 * so with g_n = gy . s_n (+ the gradient of p_n where p_n is an output, + that of R
 * at n = L), dh_n = g_n - g_L for n < L (h_L and later h do not enter y), and
 *   ds_n = p_n gy + dh_n h_n (1 - h_n) w_n,  dw_n += dlogit_n s_n,  db_n += dlogit_n.
 * States of later hops (frozen tokens) get zero. Pointer arrays hold one entry per
 * hop run; unit_weights[n] is NULL at the cap hop (no unit), grad_weights may be NULL
 * or hold NULL entries. grad_unit_weight is (hops_run, width), grad_unit_bias
 * (hops_run), both accumulated into.
 */
#define DEFINE_ACT_BACKWARD(NAME, T)                                                     \
    void NAME(int64_t hops_run, const T *const *states, const int64_t *state_strides,    \
              T *const *grad_states, const int64_t *grad_strides,                        \
              const T *grad_output, int64_t grad0, int64_t grad1,                        \
              int64_t n0, int64_t n1, int64_t width,                                     \
              const T *const *unit_weights, T *grad_unit_weight, T *grad_unit_bias,      \
              const T *const *weights, const T *hops, const T *grad_remainder,           \
              const T *const *grad_weights, int64_t token0, int64_t token1) {            \
        for (int64_t i = 0; i < n0; ++i) {                                               \
            for (int64_t j = 0; j < n1; ++j) {                                           \
                const int64_t t = i * token0 + j * token1;                               \
                const T *gy = grad_output + i * grad0 + j * grad1;                       \
                const int64_t last = (int64_t)hops[t] - 1;                               \
                T g_last = grad_remainder ? grad_remainder[t] : (T)0;                    \
                const T *s_last = states[last] + i * state_strides[2 * last]             \
                                  + j * state_strides[2 * last + 1];                     \
                for (int64_t d = 0; d < width; ++d) g_last += gy[d] * s_last[d];         \
                if (grad_weights && grad_weights[last]) g_last += grad_weights[last][t]; \
                for (int64_t n = 0; n < hops_run; ++n) {                                 \
                    const T *s = states[n] + i * state_strides[2 * n]                    \
                                 + j * state_strides[2 * n + 1];                         \
                    T *gs = grad_states[n] + i * grad_strides[2 * n]                     \
                            + j * grad_strides[2 * n + 1];                               \
                    if (n > last) {                                                      \
                        for (int64_t d = 0; d < width; ++d) gs[d] = 0;                   \
                        continue;                                                        \
                    }                                                                    \
                    const T p = weights[n][t];                                           \
                    T dlogit = 0;                                                        \
                    if (n < last) {                                                      \
                        T g = grad_weights && grad_weights[n] ? grad_weights[n][t] : 0;  \
                        for (int64_t d = 0; d < width; ++d) g += gy[d] * s[d];           \
                        dlogit = (g - g_last) * p * ((T)1 - p); /* h_n = p_n here */     \
                    }                                                                    \
                    if (dlogit != 0) {                                                   \
                        const T *w = unit_weights[n];                                    \
                        T *gw = grad_unit_weight + n * width;                            \
                        for (int64_t d = 0; d < width; ++d) {                            \
                            gs[d] = p * gy[d] + dlogit * w[d];                           \
                            gw[d] += dlogit * s[d];                                      \
                        }                                                                \
                        grad_unit_bias[n] += dlogit;                                     \
                    } else {                                                             \
                        for (int64_t d = 0; d < width; ++d) gs[d] = p * gy[d];           \
                    }                                                                    \
                }                                                                        \
            }                                                                            \
        }                                                                                \
    }

DEFINE_ACT_BACKWARD(ponderlab_act_backward_f32, float)
DEFINE_ACT_BACKWARD(ponderlab_act_backward_f64, double)
