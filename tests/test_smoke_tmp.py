import asyncio, json
import websockets
import tests.support.testing_app  # noqa

async def recv(ws, t=5):
    return json.loads(await asyncio.wait_for(ws.recv(), t))

async def test_ws(ripple):
    async with websockets.connect(ripple.ws_url) as ws:
        await ws.send(json.dumps({"type":"Connect","sessionId":"s1","connectionCount":0,"lastCloseReason":"InitialConnect","clientTs":0}))
        await ws.send(json.dumps({"type":"ModifyQuerySet","baseVersion":0,"newVersion":1,"modifications":[{"type":"Add","queryId":0,"udfPath":"testing:videosByStatus","args":[{"status":"Queued"}]}]}))
        print(await recv(ws))
        await ws.send(json.dumps({"type":"Mutation","requestId":0,"udfPath":"testing:insert","args":[{"table":"videos","doc":{"twitchId":"x","title":"X","status":"Queued"}}]}))
        for _ in range(3):
            try: print(await recv(ws, 2))
            except asyncio.TimeoutError: break
