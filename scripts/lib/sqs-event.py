"""SQS messages as Lambda's SQS event source hands them to a function, for scripts/sam-local.sh.

  sqs-event.py event RECEIVED EVENT   ReceiveMessage's answer (JSON) -> the SQS event; prints the count
  sqs-event.py done EVENT ANSWER      the function's SqsBatchResponse -> one line a message: its
                                      receipt handle to delete, or `failed:<id>` when it was reported
"""
import json
import sys


def event(received, out):
    messages = json.load(open(received)).get("Messages", [])
    records = [
        {
            "messageId": m["MessageId"],
            "receiptHandle": m["ReceiptHandle"],
            "body": m["Body"],
            "attributes": m.get("Attributes", {}),
            "messageAttributes": {},
            "md5OfBody": m.get("MD5OfBody", ""),
            "eventSource": "aws:sqs",
            "eventSourceARN": "arn:aws:sqs:us-east-1:000000000000:fanout",
            "awsRegion": "us-east-1",
        }
        for m in messages
    ]
    json.dump({"Records": records}, open(out, "w"))
    print(len(records))


def done(event_file, answer_file):
    records = json.load(open(event_file))["Records"]
    answer = json.load(open(answer_file))
    if not isinstance(answer, dict) or "batchItemFailures" not in answer:
        sys.exit(f"not a batch response: {answer}")
    failed = {f["itemIdentifier"] for f in answer["batchItemFailures"]}
    for r in records:
        print(f"failed:{r['messageId']}" if r["messageId"] in failed else r["receiptHandle"])


if __name__ == "__main__":
    {"event": event, "done": done}[sys.argv[1]](*sys.argv[2:])
