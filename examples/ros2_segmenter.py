"""A ROS 2 node around edgeseg: sensor_msgs/Image in; mono8 labels, mono8 confidence and a bgr8
overlay out.

    ros2 run --prefix 'python3' ... or simply:
    python3 examples/ros2_segmenter.py --ros-args -p model:=model.onnx -r image:=/camera/image_raw

Parameters: ``model`` (path to .onnx/.engine/.pt, or a shipped model's name), ``alpha``
(overlay opacity, 0 disables the overlay topic), ``backend`` (auto|ort|trt|torch),
``min_confidence`` (a probability, 0 = off: pixels whose winning class is less likely get the
model's ignore label, so a costmap layer can treat them as unknown), ``confidence`` (publish the
confidence topic). Topics: subscribes ``image``; publishes ``~/labels`` (mono8 class indices at
the input size, same header), ``~/confidence`` (mono8, 255 x the winning class's probability)
and ``~/overlay`` (bgr8).
The subscription keeps only the newest message (depth 1, best effort): a slow model drops old
frames instead of building a backlog, as ``edgeseg stream --mode realtime`` does.
"""

from __future__ import annotations

import rclpy
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from edgeseg import Segmenter
from edgeseg.streaming.ros2 import fill_image_msg, image_msg_to_bgr


class SegmenterNode(Node):
    def __init__(self) -> None:
        super().__init__("edgeseg_segmenter")
        model = self.declare_parameter("model", "model.onnx").value
        self.alpha = float(self.declare_parameter("alpha", 0.5).value)
        backend = self.declare_parameter("backend", "auto").value
        floor = float(self.declare_parameter("min_confidence", 0.0).value)
        publish_conf = bool(self.declare_parameter("confidence", True).value)
        self.seg = Segmenter(
            model, backend=backend, confidence=publish_conf, min_confidence=floor or None
        )
        qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
        self.sub = self.create_subscription(Image, "image", self.on_image, qos)
        self.pub_labels = self.create_publisher(Image, "~/labels", 1)
        self.pub_overlay = self.create_publisher(Image, "~/overlay", 1) if self.alpha > 0 else None
        self.pub_conf = self.create_publisher(Image, "~/confidence", 1) if publish_conf else None
        self.get_logger().info(
            f"edgeseg: {model} ({self.seg.backend.name}, {self.seg.kernels} kernels), "
            f"{len(self.seg.spec.classes)} classes"
        )

    def on_image(self, msg: Image) -> None:
        frame = image_msg_to_bgr(msg)
        res = self.seg(frame, overlay_alpha=self.alpha if self.pub_overlay else None)
        self.pub_labels.publish(fill_image_msg(Image(), res.labels, "mono8", msg.header))
        if self.pub_conf is not None:
            self.pub_conf.publish(fill_image_msg(Image(), res.confidence, "mono8", msg.header))
        if self.pub_overlay is not None:
            self.pub_overlay.publish(fill_image_msg(Image(), res.vis, "bgr8", msg.header))


def main() -> None:
    rclpy.init()
    node = SegmenterNode()
    try:
        rclpy.spin(node)
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
