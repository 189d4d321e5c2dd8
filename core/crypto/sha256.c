/*
 * crypto/sha256.c - SHA-256 (FIPS 180-4), HMAC (RFC 2104) and PBKDF2
 * (RFC 8018) over it.  spec/c/test_sha256.c checks the published test
 * vectors of each.
 */
#include <string.h>

#include "crypto/sha256.h"

static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1,
    0x923f82a4, 0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3,
    0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
    0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147,
    0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
    0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
    0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208,
    0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static uint32_t ror(uint32_t x, unsigned n)
{
    return (x >> n) | (x << (32 - n));
}

static void block(zkf_sha256_ctx *c, const unsigned char *p)
{
    uint32_t w[64], a, b, cc, d, e, f, g, h;

    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16
               | (uint32_t)p[4 * i + 2] << 8 | (uint32_t)p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ror(w[i - 15], 7) ^ ror(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ror(w[i - 2], 17) ^ ror(w[i - 2], 19) ^ (w[i - 2] >> 10);

        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    a = c->h[0]; b = c->h[1]; cc = c->h[2]; d = c->h[3];
    e = c->h[4]; f = c->h[5]; g = c->h[6]; h = c->h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = h + (ror(e, 6) ^ ror(e, 11) ^ ror(e, 25))
                      + ((e & f) ^ (~e & g)) + K[i] + w[i];
        uint32_t t2 = (ror(a, 2) ^ ror(a, 13) ^ ror(a, 22))
                      + ((a & b) ^ (a & cc) ^ (b & cc));

        h = g; g = f; f = e; e = d + t1;
        d = cc; cc = b; b = a; a = t1 + t2;
    }
    c->h[0] += a; c->h[1] += b; c->h[2] += cc; c->h[3] += d;
    c->h[4] += e; c->h[5] += f; c->h[6] += g; c->h[7] += h;
}

void zkf_sha256_init(zkf_sha256_ctx *c)
{
    static const uint32_t iv[8] = {
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
        0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
    };

    memcpy(c->h, iv, sizeof(iv));
    c->len = 0;
    c->used = 0;
}

void zkf_sha256_update(zkf_sha256_ctx *c, const void *data, size_t len)
{
    const unsigned char *p = data;

    c->len += len;
    while (len > 0) {
        size_t n = 64 - c->used;

        if (n > len)
            n = len;
        memcpy(c->buf + c->used, p, n);
        c->used += n;
        p += n;
        len -= n;
        if (c->used == 64) {
            block(c, c->buf);
            c->used = 0;
        }
    }
}

void zkf_sha256_final(zkf_sha256_ctx *c, unsigned char out[ZKF_SHA256_LEN])
{
    uint64_t bits = c->len * 8;
    unsigned char pad = 0x80, len[8];

    zkf_sha256_update(c, &pad, 1);
    pad = 0;
    while (c->used != 56)
        zkf_sha256_update(c, &pad, 1);
    for (int i = 0; i < 8; i++)
        len[i] = (unsigned char)(bits >> (56 - 8 * i));
    zkf_sha256_update(c, len, 8);
    for (int i = 0; i < 8; i++) {
        out[4 * i] = (unsigned char)(c->h[i] >> 24);
        out[4 * i + 1] = (unsigned char)(c->h[i] >> 16);
        out[4 * i + 2] = (unsigned char)(c->h[i] >> 8);
        out[4 * i + 3] = (unsigned char)c->h[i];
    }
}

void zkf_sha256(const void *data, size_t len, unsigned char out[ZKF_SHA256_LEN])
{
    zkf_sha256_ctx c;

    zkf_sha256_init(&c);
    zkf_sha256_update(&c, data, len);
    zkf_sha256_final(&c, out);
}

/* The two keyed states of an HMAC, kept so PBKDF2 hashes the key once. */
typedef struct hmac_key {
    zkf_sha256_ctx inner, outer;
} hmac_key;

static void hmac_init(hmac_key *k, const void *key, size_t klen)
{
    unsigned char kb[64] = {0}, ipad[64], opad[64];

    if (klen > 64)
        zkf_sha256(key, klen, kb);
    else
        memcpy(kb, key, klen);
    for (int i = 0; i < 64; i++) {
        ipad[i] = kb[i] ^ 0x36;
        opad[i] = kb[i] ^ 0x5c;
    }
    zkf_sha256_init(&k->inner);
    zkf_sha256_update(&k->inner, ipad, 64);
    zkf_sha256_init(&k->outer);
    zkf_sha256_update(&k->outer, opad, 64);
}

static void hmac_run(const hmac_key *k, const void *msg, size_t mlen,
                     const void *msg2, size_t mlen2,
                     unsigned char out[ZKF_SHA256_LEN])
{
    zkf_sha256_ctx c = k->inner;
    unsigned char ih[ZKF_SHA256_LEN];

    zkf_sha256_update(&c, msg, mlen);
    if (mlen2 > 0)
        zkf_sha256_update(&c, msg2, mlen2);
    zkf_sha256_final(&c, ih);
    c = k->outer;
    zkf_sha256_update(&c, ih, sizeof(ih));
    zkf_sha256_final(&c, out);
}

void zkf_hmac_sha256(const void *key, size_t klen, const void *msg,
                     size_t mlen, unsigned char out[ZKF_SHA256_LEN])
{
    hmac_key k;

    hmac_init(&k, key, klen);
    hmac_run(&k, msg, mlen, NULL, 0, out);
}

void zkf_pbkdf2_sha256(const void *pass, size_t plen, const void *salt,
                       size_t slen, unsigned long iterations,
                       unsigned char *out, size_t outlen)
{
    hmac_key k;
    uint32_t i = 1;

    hmac_init(&k, pass, plen);
    while (outlen > 0) {
        unsigned char be[4] = {
            (unsigned char)(i >> 24), (unsigned char)(i >> 16),
            (unsigned char)(i >> 8), (unsigned char)i,
        };
        unsigned char u[ZKF_SHA256_LEN], t[ZKF_SHA256_LEN];
        size_t n = outlen < ZKF_SHA256_LEN ? outlen : ZKF_SHA256_LEN;

        hmac_run(&k, salt, slen, be, 4, u);
        memcpy(t, u, sizeof(t));
        for (unsigned long r = 1; r < iterations; r++) {
            hmac_run(&k, u, sizeof(u), NULL, 0, u);
            for (int j = 0; j < ZKF_SHA256_LEN; j++)
                t[j] ^= u[j];
        }
        memcpy(out, t, n);
        out += n;
        outlen -= n;
        i++;
    }
}
