"""A voice agent built on Pipecat's Twilio Media Streams serializer, for the media-node tests.

It is the independent implementation of the agent protocol: every message from the node is
decoded by `pipecat.serializers.twilio.TwilioFrameSerializer.deserialize`, and everything the
agent sends is produced by `TwilioFrameSerializer.serialize` from Pipecat frames.

Behaviour (one call per connection):
- records the caller audio (PCM after Pipecat's μ-law decoding) and the DTMF digits;
- on digit "1": sends REPLY_MS of a tone as an OutputAudioRawFrame (Pipecat converts to μ-law);
- on digit "2": sends an InterruptionFrame (Pipecat's barge-in, a `clear`);
- on digit "#": closes the socket (the node must hang up the call).
When the socket closes it writes a JSON report to the path given as argv[1].

Prints "READY <port>" on stdout once listening on 127.0.0.1.
"""

import asyncio
import base64
import json
import math
import sys

import websockets
from pipecat.frames.frames import InputAudioRawFrame, InputDTMFFrame, InterruptionFrame, OutputAudioRawFrame
from pipecat.serializers.twilio import TwilioFrameSerializer

REPLY_MS = 400
RATE = 8000


class _Setup:
    """The one attribute TwilioFrameSerializer.setup reads from a pipeline's setup."""

    audio_in_sample_rate = RATE


def tone_pcm(ms: int) -> bytes:
    """A 16-bit little-endian 440 Hz tone at 8 kHz."""
    n = RATE * ms // 1000
    return b"".join(
        int(8000 * math.sin(2 * math.pi * 440 * i / RATE)).to_bytes(2, "little", signed=True) for i in range(n)
    )


async def handle(ws, report_path: str):
    report = {"events": [], "start": None, "caller_pcm": "", "digits": [], "sent": []}
    serializer = None
    pcm = bytearray()
    try:
        async for raw in ws:
            msg = json.loads(raw)
            event = msg.get("event")
            report["events"].append(event)
            if event == "start":
                report["start"] = msg
                start = msg["start"]
                serializer = TwilioFrameSerializer(
                    stream_sid=start["streamSid"],
                    call_sid=start["callSid"],
                    account_sid=start["accountSid"],
                    params=TwilioFrameSerializer.InputParams(auto_hang_up=False),
                )
                await serializer.setup(_Setup())
                continue
            if serializer is None:
                continue
            frame = await serializer.deserialize(raw)
            if isinstance(frame, InputAudioRawFrame):
                pcm.extend(frame.audio)
            elif isinstance(frame, InputDTMFFrame):
                digit = frame.button.value
                report["digits"].append(digit)
                if digit == "1":
                    out = await serializer.serialize(
                        OutputAudioRawFrame(audio=tone_pcm(REPLY_MS), sample_rate=RATE, num_channels=1)
                    )
                    report["sent"].append(json.loads(out))
                    await ws.send(out)
                elif digit == "2":
                    out = await serializer.serialize(InterruptionFrame())
                    report["sent"].append(json.loads(out))
                    await ws.send(out)
                elif digit == "#":
                    await ws.close()
                    break
    except websockets.ConnectionClosed:
        pass
    finally:
        report["caller_pcm"] = base64.b64encode(bytes(pcm)).decode()
        with open(report_path, "w") as f:
            json.dump(report, f)


async def main():
    report_path = sys.argv[1]
    async with websockets.serve(lambda ws: handle(ws, report_path), "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"READY {port}", flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main())
