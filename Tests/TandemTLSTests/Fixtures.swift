/// Throwaway PEM files for these tests only, made with the openssl CLI:
/// a CA, a node certificate it signed (IP:127.0.0.1 and DNS:localhost, for
/// serverAuth and clientAuth), and an unrelated self-signed certificate
/// with its own key. They secure nothing.
enum Fixtures {
    static let caPEM = """
        -----BEGIN CERTIFICATE-----
        MIIBkzCCATmgAwIBAgIUI5+oKP98/PIlb/EJNMDzf418RWAwCgYIKoZIzj0EAwIw
        HjEcMBoGA1UEAwwTVGFuZGVtIHVuaXQgdGVzdCBDQTAgFw0yNjExMjIxMTA5MTla
        GA8yMTI2MTAyOTExMDkxOVowHjEcMBoGA1UEAwwTVGFuZGVtIHVuaXQgdGVzdCBD
        QTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABDHJ4myZp0OpWPgKBIYmLfMvuKFC
        NXgwhERKLmeH0QLaBFctsJHWHRQyiD38gMIlCzsVljNB76Sq0MuDfFNUuW2jUzBR
        MB0GA1UdDgQWBBQw5aeV65vJbwEZqckZtQ0uepuN8jAfBgNVHSMEGDAWgBQw5aeV
        65vJbwEZqckZtQ0uepuN8jAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0gA
        MEUCIAz3RT2K0xXjYHR/16015VITqbAeKMq+dqF9wGQklDtEAiEA+byxivobSLTY
        ZoaM2zRZhqCyJEG+kew6sBqciF47w/k=
        -----END CERTIFICATE-----
        """

    static let nodePEM = """
        -----BEGIN CERTIFICATE-----
        MIIBszCCAVmgAwIBAgIUOlLF+t9p3tSjddcP6Kr1y+JXhTIwCgYIKoZIzj0EAwIw
        HjEcMBoGA1UEAwwTVGFuZGVtIHVuaXQgdGVzdCBDQTAgFw0yNjExMjIxMTA5MTla
        GA8yMTI2MTAyOTExMDkxOVowFDESMBAGA1UEAwwJdW5pdC1ub2RlMFkwEwYHKoZI
        zj0CAQYIKoZIzj0DAQcDQgAEOZLZP9efzGiT7aLp6wkfNFKauFFtL41CvySRcg+S
        Ou9V0Riu51ZhpxTatgSncR7xAbE8cwnfMFrAfGc3LHszb6N9MHswGgYDVR0RBBMw
        EYcEfwAAAYIJbG9jYWxob3N0MB0GA1UdJQQWMBQGCCsGAQUFBwMBBggrBgEFBQcD
        AjAdBgNVHQ4EFgQUuj4fD1UruBz14QksEp4RituhOg0wHwYDVR0jBBgwFoAUMOWn
        leubyW8BGanJGbUNLnqbjfIwCgYIKoZIzj0EAwIDSAAwRQIhAPqIyhJKefsl8Vpr
        YgrYA/n7ss+44hmm0gqBY8HK+af3AiAxwnaPqrM8CQhui6yU79zXiur4npgFmIho
        eZIt4pl0Rw==
        -----END CERTIFICATE-----
        """

    static let nodeKey = """
        -----BEGIN PRIVATE KEY-----
        MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgv6Y3/Cy2mZn/rpyc
        2h4El3uucQVtvtrwr1i5iU5rXUChRANCAAQ5ktk/15/MaJPtounrCR80Upq4UW0v
        jUK/JJFyD5I671XRGK7nVmGnFNq2BKdxHvEBsTxzCd8wWsB8ZzcsezNv
        -----END PRIVATE KEY-----
        """

    static let otherPEM = """
        -----BEGIN CERTIFICATE-----
        MIIBgTCCASegAwIBAgIUM5hO0JqvTio7gl/U3Jp2OKRn+/EwCgYIKoZIzj0EAwIw
        FTETMBEGA1UEAwwKQW5vdGhlciBDQTAgFw0yNjExMjIxMTA5MTlaGA8yMTI2MTAy
        OTExMDkxOVowFTETMBEGA1UEAwwKQW5vdGhlciBDQTBZMBMGByqGSM49AgEGCCqG
        SM49AwEHA0IABDSn8bDTF9xqYa1nYEyjTk6W5aL35C9qqsZPOlSiJj7lss5UIpS2
        7zzkQ6LFs4Jj15KYJ6CvKMCsfnhS3MEIhAejUzBRMB0GA1UdDgQWBBSMTe/aLJFP
        PA7uQfBVNVgEkRZ0vjAfBgNVHSMEGDAWgBSMTe/aLJFPPA7uQfBVNVgEkRZ0vjAP
        BgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0gAMEUCIQCoeWYvK9tTFFqBEKZz
        SBW7vHhHkFXYN3BqCM2J/kJb2wIgSGeXWWDxr2HZbNrWRSJdwE3C/rqW/wbXIPjv
        ICX4lHk=
        -----END CERTIFICATE-----
        """

    static let otherKey = """
        -----BEGIN PRIVATE KEY-----
        MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgkhpsDxJwODbRx9Qa
        7F25OrhFl/d/ISA2SpyM2hf96ZyhRANCAAQ0p/Gw0xfcamGtZ2BMo05OluWi9+Qv
        aqrGTzpUoiY+5bLOVCKUtu885EOixbOCY9eSmCegryjArH54UtzBCIQH
        -----END PRIVATE KEY-----
        """
}
