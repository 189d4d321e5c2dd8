/*
 * test_sha256.c - core/crypto/sha256.c against published test vectors:
 * FIPS 180-4 examples (SHA-256), RFC 4231 (HMAC-SHA-256), RFC 7914 section
 * 11 and the PBKDF2-HMAC-SHA-256 vectors everyone checks.
 */
#include <stdio.h>
#include <string.h>

#include "crypto/sha256.h"
#include "test.h"

static const char *hex(const unsigned char *p, size_t n)
{
    static char buf[2 * 128 + 1];

    for (size_t i = 0; i < n && i < 128; i++)
        snprintf(buf + 2 * i, 3, "%02x", p[i]);
    return buf;
}

static const char *digest(const char *s)
{
    unsigned char out[ZKF_SHA256_LEN];

    zkf_sha256(s, strlen(s), out);
    return hex(out, sizeof(out));
}

static void test_sha256_matches_fips_examples(void)
{
    ASSERT_STR_EQ("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                  digest(""));
    ASSERT_STR_EQ("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
                  digest("abc"));
    ASSERT_STR_EQ("248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
                  digest("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"));
}

static void test_sha256_streams_a_million_bytes_in_odd_pieces(void)
{
    char a[1000];
    zkf_sha256_ctx c;
    unsigned char out[ZKF_SHA256_LEN];
    size_t left = 1000000;

    memset(a, 'a', sizeof(a));
    zkf_sha256_init(&c);
    for (size_t step = 1; left > 0; step = step % 997 + 1) {
        size_t n = step < left ? step : left;

        zkf_sha256_update(&c, a, n);
        left -= n;
    }
    zkf_sha256_final(&c, out);
    ASSERT_STR_EQ("cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0",
                  hex(out, sizeof(out)));
}

static void test_hmac_sha256_matches_rfc4231(void)
{
    unsigned char key[131], out[ZKF_SHA256_LEN];
    const char *big = "Test Using Larger Than Block-Size Key - Hash Key First";

    memset(key, 0x0b, 20);
    zkf_hmac_sha256(key, 20, "Hi There", 8, out);
    ASSERT_STR_EQ("b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
                  hex(out, sizeof(out)));
    zkf_hmac_sha256("Jefe", 4, "what do ya want for nothing?", 28, out);
    ASSERT_STR_EQ("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
                  hex(out, sizeof(out)));
    memset(key, 0xaa, sizeof(key));
    zkf_hmac_sha256(key, sizeof(key), big, strlen(big), out);
    ASSERT_STR_EQ("60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
                  hex(out, sizeof(out)));
}

static void test_pbkdf2_sha256_matches_published_vectors(void)
{
    unsigned char out[64];

    zkf_pbkdf2_sha256("password", 8, "salt", 4, 1, out, 32);
    ASSERT_STR_EQ("120fb6cffcf8b32c43e7225256c4f837a86548c92ccc35480805987cb70be17b",
                  hex(out, 32));
    zkf_pbkdf2_sha256("password", 8, "salt", 4, 4096, out, 32);
    ASSERT_STR_EQ("c5e478d59288c841aa530db6845c4c8d962893a001ce4e11a4963873aa98134a",
                  hex(out, 32));
    /* RFC 7914 section 11: two output blocks. */
    zkf_pbkdf2_sha256("passwd", 6, "salt", 4, 1, out, 64);
    ASSERT_STR_EQ("55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc"
                  "49ca9cccf179b645991664b39d77ef317c71b845b1e30bd509112041d3a19783",
                  hex(out, 64));
}

int main(void)
{
    RUN(test_sha256_matches_fips_examples);
    RUN(test_sha256_streams_a_million_bytes_in_odd_pieces);
    RUN(test_hmac_sha256_matches_rfc4231);
    RUN(test_pbkdf2_sha256_matches_published_vectors);
    return test_report();
}
