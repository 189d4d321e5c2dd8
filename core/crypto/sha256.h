/*
 * crypto/sha256.h - SHA-256, HMAC-SHA-256 and PBKDF2-HMAC-SHA-256 (FIPS
 * 180-4, RFC 2104, RFC 8018), for the API's passwords and tokens.  No
 * library of ours offers them (the engine links no TLS library), and they
 * are small.  Pure functions: no allocation, no state outside the
 * caller's zkf_sha256_ctx.
 */
#ifndef ZKF_SHA256_H
#define ZKF_SHA256_H

#include <stddef.h>
#include <stdint.h>

#define ZKF_SHA256_LEN 32

typedef struct zkf_sha256_ctx {
    uint32_t h[8];
    uint64_t len;           /* bytes hashed so far */
    unsigned char buf[64];
    size_t used;            /* bytes waiting in buf */
} zkf_sha256_ctx;

/* Streaming: init, update any number of times, final.  Cannot fail. */
void zkf_sha256_init(zkf_sha256_ctx *c);
void zkf_sha256_update(zkf_sha256_ctx *c, const void *data, size_t len);
void zkf_sha256_final(zkf_sha256_ctx *c, unsigned char out[ZKF_SHA256_LEN]);

/* One-shot digest of `data`.  Cannot fail. */
void zkf_sha256(const void *data, size_t len, unsigned char out[ZKF_SHA256_LEN]);

/* HMAC-SHA-256 of `msg` under `key`.  Cannot fail. */
void zkf_hmac_sha256(const void *key, size_t klen, const void *msg,
                     size_t mlen, unsigned char out[ZKF_SHA256_LEN]);

/* PBKDF2-HMAC-SHA-256: `outlen` bytes derived from `pass` and `salt` with
 * `iterations` rounds (>= 1) into `out`.  Cannot fail. */
void zkf_pbkdf2_sha256(const void *pass, size_t plen, const void *salt,
                       size_t slen, unsigned long iterations,
                       unsigned char *out, size_t outlen);

#endif
