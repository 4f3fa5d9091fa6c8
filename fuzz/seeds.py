#!/usr/bin/env python3
"""Writes the hand-written seed corpus under fuzz/corpus/<target>/.

Run from anywhere: `python3 fuzz/seeds.py`. The output is committed; rerun after editing a
seed here. Seeds are realistic messages of each format (what carriers, phones and agents
send), plus a few edge cases each parser has special code for.
"""
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def write(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def crlf(text):
    return text.replace("\n", "\r\n")


# ---------------------------------------------------------------------------- SDP
SDP_OFFER = crlf("""v=0
o=carrier 2890844526 2890844527 IN IP4 203.0.113.5
s=-
c=IN IP4 203.0.113.5
t=0 0
m=audio 49170 RTP/AVP 0 8 18 101
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:18 G729/8000
a=fmtp:18 annexb=no
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=ptime:20
a=sendrecv
""")
SDP_HOLD = crlf("""v=0
o=- 1 2 IN IP4 0.0.0.0
s=hold
c=IN IP4 0.0.0.0
t=0 0
m=audio 49170 RTP/AVP 8
a=sendonly
""")
SDP_MULTI = crlf("""v=0
o=phone 7 7 IN IP6 2001:db8::5
s=call
t=0 0
m=video 51372 RTP/AVP 31 32
c=IN IP6 2001:db8::6
a=rtpmap:31 H261/90000
m=audio 49172/2 RTP/SAVP 8 0 96
c=IN IP6 2001:db8::5
a=rtpmap:96 TELEPHONE-EVENT/8000
a=recvonly
m=application 9 UDP/BFCP *
m=audio 0 RTP/AVP 0
""")
SDP_MULTICAST = """v=0
o=x 1 1 IN IP4 224.2.17.12
s=multicast, bare LF
c=IN IP4 224.2.17.12/127
t=0 0
a=inactive
m=audio 3456 RTP/AVP 0
"""

# ---------------------------------------------------------------------------- SIP
INVITE = crlf("""INVITE sip:+15551234567@198.51.100.7:5060;transport=udp SIP/2.0
Via: SIP/2.0/UDP 203.0.113.5:5060;branch=z9hG4bK776asdhds;rport
Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKnashds8;received=192.0.2.1
Max-Forwards: 70
To: <sip:+15551234567@198.51.100.7>
From: "Alice \\"A\\" Smith" <sip:+15557654321@203.0.113.5>;tag=1928301774
Call-ID: a84b4c76e66710@pc33.carrier.example
CSeq: 314159 INVITE
Contact: <sip:+15557654321@203.0.113.5:5060;transport=udp>
Record-Route: <sip:p1.carrier.example;lr>, <sip:p2.carrier.example;lr>
Supported: timer, 100rel
Session-Expires: 1800;refresher=uac
Min-SE: 90
Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO
User-Agent: CarrierSBC/4.2
Content-Type: application/sdp
Content-Length: %d

""")
invite = INVITE % len(SDP_OFFER.encode()) + SDP_OFFER

COMPACT = crlf("""INVITE sip:bob@[2001:db8::1]:5070 SIP/2.0
v: SIP / 2.0 / TCP [2001:db8::9]:5071;branch=z9hG4bK-compact
f: Anonymous <sip:anonymous@anonymous.invalid>;tag=xyz
t: sip:bob@[2001:db8::1]:5070
i: compact-1@host
CSeq: 1 INVITE
m: <sip:caller@[2001:db8::9]:5071;transport=tcp>
k: timer
x: 600;refresher=uas
c: application/sdp
l: %d

""")
compact = COMPACT % len(SDP_MULTI.encode()) + SDP_MULTI

FOLDED = crlf("""OPTIONS sip:node@127.0.0.1 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5062
 ;branch=z9hG4bKfold
\t;rport
To: sip:node@127.0.0.1
From: <sip:probe@127.0.0.1>
 ;tag=fold
Call-ID: folded@127.0.0.1
CSeq: 7 OPTIONS
Subject: a subject
   that continues
Content-Length: 0

""")

OPTIONS_ZERO_PADDED = crlf("""OPTIONS sip:node@127.0.0.1 SIP/2.0
Via: SIP/2.0/TCP 127.0.0.1:5062;branch=z9hG4bKpad
To: <sip:node@127.0.0.1>
From: <sip:probe@127.0.0.1>;tag=pad
Call-ID: pad@127.0.0.1
CSeq: 8 OPTIONS
Content-Length: 00000000000000000000

""")

BARE_LF = """REGISTER sip:registrar.example SIP/2.0
Via: SIP/2.0/UDP 192.0.2.4:5060;branch=z9hG4bKlf
To: <sip:trunk@registrar.example>
From: <sip:trunk@registrar.example>;tag=reg
Call-ID: lf-only@192.0.2.4
CSeq: 2 REGISTER
Contact: <sip:trunk@192.0.2.4:5060>;expires=3600
Authorization: Digest username="trunk", realm="registrar.example", nonce="abc", uri="sip:registrar.example", response="0123456789abcdef0123456789abcdef", algorithm=MD5

"""

RESPONSE_401 = crlf("""SIP/2.0 401 Unauthorized
Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKout1;received=198.51.100.7;rport=5060
From: <sip:node@198.51.100.7>;tag=out
To: <sip:+15550001111@carrier.example>;tag=srv
Call-ID: out-1@198.51.100.7
CSeq: 1 INVITE
WWW-Authenticate: Digest realm="carrier.example", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41", algorithm=MD5, qop="auth,auth-int"
Content-Length: 0

""")

RESPONSE_200 = crlf("""SIP/2.0 200 OK
Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKout2
From: <sip:node@198.51.100.7>;tag=out
To: "Bob" <sip:bob@carrier.example>;tag=b0b
Call-ID: out-2@198.51.100.7
CSeq: 2 INVITE
Contact: <sip:bob@203.0.113.9:5060>
Record-Route: <sip:edge.carrier.example;lr;transport=udp>
Require: timer
Session-Expires: 900;refresher=uac
Content-Type: application/sdp
Content-Length: %d

""") % len(SDP_HOLD.encode()) + SDP_HOLD

BYE = crlf("""BYE sip:node@198.51.100.7:5060 SIP/2.0
Via: SIP/2.0/UDP 203.0.113.5:5060;branch=z9hG4bKbye
Max-Forwards: 70
From: <sip:+15557654321@203.0.113.5>;tag=1928301774
To: <sip:+15551234567@198.51.100.7>;tag=node
Call-ID: a84b4c76e66710@pc33.carrier.example
CSeq: 314160 BYE
Content-Length: 0

""")

INFO_RELAY_BODY = "Signal=5\r\nDuration=160\r\n"
INFO = crlf("""INFO sip:node@198.51.100.7 SIP/2.0
Via: SIP/2.0/UDP 203.0.113.5:5060;branch=z9hG4bKinfo
From: <sip:+15557654321@203.0.113.5>;tag=1928301774
To: <sip:+15551234567@198.51.100.7>;tag=node
Call-ID: a84b4c76e66710@pc33.carrier.example
CSeq: 314161 INFO
Content-Type: application/dtmf-relay
Content-Length: %d

""") % len(INFO_RELAY_BODY) + INFO_RELAY_BODY

TEL_ACK = crlf("""ACK tel:+15551234567;phone-context=example.com SIP/2.0
Via: SIP/2.0/UDP 203.0.113.5;branch=z9hG4bKack
From: <tel:+15557654321>;tag=t
To: <tel:+15551234567>;tag=node
Call-ID: tel@203.0.113.5
CSeq: 314159 ACK
Content-Length: 0

""")

SIP_MESSAGES = {
    "invite_sdp": invite,
    "invite_compact_ipv6": compact,
    "options_folded": FOLDED,
    "register_bare_lf": BARE_LF,
    "response_401": RESPONSE_401,
    "response_200_sdp": RESPONSE_200,
    "bye": BYE,
    "info_dtmf_relay": INFO,
    "ack_tel": TEL_ACK,
}
for name, msg in SIP_MESSAGES.items():
    write("sip_datagram", name, msg)
write("sip_datagram", "zero_padded_cl", OPTIONS_ZERO_PADDED)
# A datagram whose body runs past Content-Length (cut to it, RFC 3261 18.3).
write("sip_datagram", "body_longer_than_cl", BYE.replace("Content-Length: 0", "Content-Length: 4") + "abcdefgh")

# TCP streams: pipelined messages, keep-alive CRLFs between them, a partial last message.
write("sip_stream", "pipelined", invite + BYE + INFO)
write("sip_stream", "keepalives", "\r\n\r\n" + FOLDED + "\r\n\r\n" + RESPONSE_200 + "\r\n")
write("sip_stream", "compact_then_partial", compact + invite[: len(invite) // 2])
write("sip_stream", "single_invite", invite)
# Leading zeros are legal in Content-Length (1*DIGIT): a 20-digit field, as wide as u64 gets.
write("sip_stream", "zero_padded_cl", OPTIONS_ZERO_PADDED + BYE)

# Header values, one per line as the node sees them after unfolding.
HEADER_VALUES = [
    "SIP/2.0/UDP 203.0.113.5:5060;branch=z9hG4bK776asdhds;rport",
    "SIP / 2.0 / TCP [2001:db8::9]:5071 ;branch=z9hG4bKx;received=192.0.2.1",
    "SIP/2.0/WSS edge.example;branch=z9hG4bK1, SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK2",
    '"Alice \\"A\\" <Smith>" <sip:+15557654321@203.0.113.5;user=phone>;tag=1928301774',
    "<sip:bob@[2001:db8::1]:5070;transport=tcp>;expires=60",
    "sip:alice@atlanta.example;tag=88sja8x",
    "sips:secure@example.com:5061?subject=project",
    "tel:+15551234567;phone-context=example.com",
    "<sip:p1.carrier.example;lr>, <sip:p2.carrier.example;lr>",
    "1800;refresher=uac",
    "timer, 100rel, replaces",
    "314159 INVITE",
    "[2001:db8::1]:5070",
    "127.0.0.1:5060",
    "*",
]
write("sip_headers", "values", "\n".join(HEADER_VALUES))
for i, v in enumerate(HEADER_VALUES):
    write("sip_headers", "value_%02d" % i, v)

write("sdp", "offer_pcmu_pcma_te", SDP_OFFER)
write("sdp", "hold_c0", SDP_HOLD)
write("sdp", "multi_stream_ipv6", SDP_MULTI)
write("sdp", "multicast_bare_lf", SDP_MULTICAST)
SDES_KEY = "WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz"
write("sdp", "srtp_savp", SDP_OFFER.replace("RTP/AVP", "RTP/SAVP") +
      "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:%s|2^20\r\n"
      "a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:%s\r\n" % (SDES_KEY, SDES_KEY))
write("sdp", "srtp_best_effort_unusable", SDP_OFFER +
      "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:%s|2^20|1:4 UNENCRYPTED_SRTP\r\n"
      "a=crypto:9 AEAD_AES_128_GCM inline:c2hvcnQ=\r\n" % SDES_KEY)

# ---------------------------------------------------------------------------- RTP
def rtp(pt, seq, ts, ssrc, payload, marker=False, csrcs=(), ext=None, pad=0):
    b0 = 0x80 | (0x20 if pad else 0) | (0x10 if ext is not None else 0) | len(csrcs)
    b1 = (0x80 if marker else 0) | pt
    out = struct.pack("!BBHII", b0, b1, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc)
    for c in csrcs:
        out += struct.pack("!I", c)
    if ext is not None:
        profile, data = ext
        out += struct.pack("!HH", profile, len(data) // 4) + data
    out += payload
    if pad:
        out += b"\x00" * (pad - 1) + bytes([pad])
    return out


def event(ev, end, vol, dur):
    return struct.pack("!BBH", ev, (0x80 if end else 0) | vol, dur)


def records(pkts):
    """[ms step][u16 length][packet] records for the rtp target."""
    return b"".join(struct.pack("!BH", step, len(p)) + p for step, p in pkts)


SSRC = 0x1234ABCD
audio = [(20, rtp(0, 1000 + i, 160 * i, SSRC, bytes([0xFF - i]) * 160, marker=(i == 0))) for i in range(6)]
write("rtp", "audio_stream", records(audio))
# Reordered, duplicated and lost packets, then a sequence wrap.
shuffled = [audio[0], audio[2], audio[1], audio[1], audio[5]]
wrap = [(20, rtp(0, 0xFFFE + i, 160 * i, SSRC, b"\x7f" * 160)) for i in range(4)]
write("rtp", "reorder_dup_wrap", records(shuffled + wrap))
# CSRCs, a one-byte-header extension (RFC 8285) and padding.
fancy = rtp(0, 5, 800, SSRC, b"\xff" * 160, csrcs=(1, 2, 3),
            ext=(0xBEDE, b"\x10\x01\x00\x00"), pad=4)
write("rtp", "csrc_ext_padding", records([(20, fancy)]))
write("rtp", "single_packet_raw", fancy)
# An RFC 4733 digit inside the RTP stream (PT 101), with its three end packets.
dtmf_pkts = [(20, rtp(101, 2000 + i, 8000, SSRC, event(5, i >= 3, 10, 160 * (i + 1)), marker=(i == 0)))
             for i in range(6)]
write("rtp", "audio_then_dtmf", records(audio[:2] + dtmf_pkts))
# SSRC change mid-stream and a large sequence jump.
jump = [(20, rtp(0, 30000, 99999, SSRC, b"\xff" * 160)), (20, rtp(0, 30001, 100159, SSRC, b"\xff" * 160)),
        (200, rtp(0, 7, 0, 0xCAFEBABE, b"\xd5" * 160))]
write("rtp", "jump_and_ssrc_change", records(audio[:2] + jump))

# ---------------------------------------------------------------------------- RTCP
def rtcp_hdr(count, pt, body, pad=0):
    if pad:
        body = body + b"\x00" * (pad - 1) + bytes([pad])
    assert len(body) % 4 == 0
    return struct.pack("!BBH", 0x80 | (0x20 if pad else 0) | count, pt, len(body) // 4) + body


def block(ssrc, lost_frac, cum, ext_seq, jitter, lsr, dlsr):
    return struct.pack("!IB", ssrc, lost_frac) + cum.to_bytes(3, "big", signed=True) + struct.pack(
        "!IIII", ext_seq, jitter, lsr, dlsr)


def sdes(ssrc, cname):
    chunk = struct.pack("!I", ssrc) + bytes([1, len(cname)]) + cname + b"\x00"
    chunk += b"\x00" * (-len(chunk) % 4)
    return rtcp_hdr(1, 202, chunk)


sr = rtcp_hdr(1, 200, struct.pack("!IQIII", SSRC, 0xE6B1_2345_8000_0000, 160000, 1000, 160000)
              + block(0xCAFEBABE, 12, -3, 0x0001_0010, 37, 0x2345_8000, 0x0001_8000))
rr = rtcp_hdr(2, 201, struct.pack("!I", SSRC) + block(1, 0, 5, 100, 2, 0, 0) + block(2, 255, 0x7FFFFF, 7, 0, 1, 1))
bye = rtcp_hdr(1, 203, struct.pack("!I", SSRC) + bytes([8]) + b"shutdown" + b"\x00" * 3)
app = rtcp_hdr(0, 204, struct.pack("!I", SSRC) + b"NAME" + b"data")
write("rtcp", "sr_sdes", sr + sdes(SSRC, b"switchboard@127.0.0.1"))
write("rtcp", "rr_sdes_bye", rr + sdes(SSRC, b"phone") + bye)
write("rtcp", "sr_app_padded", sr + rtcp_hdr(0, 204, struct.pack("!I", SSRC) + b"NAME", pad=8))
write("rtcp", "rr_empty_then_app", rtcp_hdr(0, 201, struct.pack("!I", SSRC)) + app)

# ---------------------------------------------------------------------------- RFC 4733
def ev_records(evs):
    """[timestamp u32][ms step u16][payload] records for the rfc4733 target."""
    return b"".join(struct.pack("!IH", ts, step) + payload for ts, step, payload in evs)


digit = [(8000, 20, event(1, False, 10, 160 * (i + 1))) for i in range(4)]
digit += [(8000, 20, event(1, True, 10, 800))] * 3
write("rfc4733", "digit_with_end_repeats", ev_records(digit))
# A long event split into segments (RFC 4733 2.5.2.3), then a late packet of it.
long_ev = [(16000, 20, event(11, False, 10, 0xFF00)), (16000 + 0xFF00, 20, event(11, False, 10, 160)),
           (16000 + 0xFF00, 20, event(11, True, 10, 320)), (15000, 20, event(11, False, 10, 160))]
write("rfc4733", "long_event_segments", ev_records(long_ev))
# A digit that never gets its end packet (timeout), then one only seen by its end packets.
write("rfc4733", "timeout_then_end_only",
      ev_records([(100, 20, event(3, False, 10, 160)), (100, 500, event(3, False, 10, 320)),
                  (900, 20, event(16, True, 0, 1600)), (900, 20, event(16, True, 0, 1600))]))
write("rfc4733", "single_payload", event(10, True, 63, 0xFFFF))

# ---------------------------------------------------------------------------- SIP INFO
write("sip_info", "dtmf_relay", "application/dtmf-relay\nSignal=5\r\nDuration=160\r\n")
write("sip_info", "dtmf_relay_star_params", "Application/DTMF-Relay; charset=utf-8\nsignal= *\nDURATION = 250\n")
write("sip_info", "dtmf_relay_event_code", "application/dtmf-relay\nSignal=11\nDuration=abc\n")
write("sip_info", "dtmf_plain", "application/dtmf\n#")
write("sip_info", "dtmf_plain_code", "application/dtmf\n10\r\n")
write("sip_info", "other_type", "application/media_control+xml\n<media_control/>")

# ---------------------------------------------------------------------------- digest
# Line 1 a carrier's challenge, line 2 the Request-URI, then Authorization templates checked
# in order (@N0..@N2 nonces issued to the caller, @N3 to another address, @R the right response).
RURI = "sip:+14155550100@sbc.example.com:5060"
def answer(nonce="@N0", uri=RURI, nc="00000001", extra=", qop=auth, cnonce=\"0a4f113b\"", alg="MD5"):
    return ('Digest username="alice", realm="example.com", nonce="%s", uri="%s", '
            'response="@R", algorithm=%s%s, nc=%s' % (nonce, uri, alg, extra, nc))
write("digest", "challenge_md5_qop",
      'Digest realm="carrier.example", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", '
      'opaque="5ccc069c403ebaf9f0171e9517f40e41", algorithm=MD5, qop="auth,auth-int"\n'
      + RURI + "\n" + answer())
write("digest", "challenge_sha256_stale",
      'digest realm="sbc", nonce="x\\"y", algorithm=SHA-256-sess, stale=TRUE, qop=auth\n'
      + RURI + "\n" + answer(alg="SHA-256-sess"))
write("digest", "challenge_no_qop",
      'Digest realm="asterisk",nonce="5f1c8a3e"\nsip:x\nDigest username=alice, realm=example.com, nonce=1, uri=sip:x, response=1')
# nc climbs, then a replay and an older nc, on one nonce
write("digest", "nonce_count_sequence", 'Digest realm="x", nonce="1"\n' + RURI + "\n" + "\n".join(
    [answer(nc="00000001"), answer(nc="00000002"), answer(nc="00000002"), answer(nc="00000001"),
     answer(nc="0000000a")]))
# a qop-less answer, another number's uri, a host-only uri, the other address's nonce
write("digest", "refusals", 'Digest realm="x", nonce="1"\n' + RURI + "\n" + "\n".join(
    [answer(extra="", nc="00000001").replace(", nc=00000001", ""),
     answer(uri="sip:+14155550199@sbc.example.com:5060"),
     answer(uri="sip:SBC.example.com:5060", nonce="@N1"),
     answer(nonce="@N3"), answer(extra=", qop=auth-int, cnonce=\"1\"")]))
# more nonces than the server tracks: the oldest are expired early
write("digest", "eviction", 'Digest realm="x", nonce="1"\n' + RURI + "\n" + "\n".join(
    [answer(nonce="@N%d" % i) for i in (0, 1, 2)] + [answer(nonce="@N0", nc="00000002")]))

# ---------------------------------------------------------------------------- agent JSON
write("agent_json", "media",
      '{"event":"media","streamSid":"MZ18ad3ab5a668481ce02b83e7395059f0",'
      '"media":{"payload":"/////39/f3//////fw=="}}')
write("agent_json", "mark", '{"event":"mark","streamSid":"MZ1","mark":{"name":"greeting-done"}}')
write("agent_json", "clear", '{"event":"clear","streamSid":"MZ1"}')
write("agent_json", "unknown", '{"event":"dtmf","streamSid":"MZ1","dtmf":{"digit":"5"},"extra":[1,2.5,null,true]}')
write("agent_json", "escaped", '{"event":"mark","mark":{"name":"caf\\u00e9 \\"q\\" \\ud83d\\ude00"}}')
write("agent_json", "media_no_payload", '{"event":"media","media":{}}')
