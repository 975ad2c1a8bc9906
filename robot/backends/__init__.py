"""Robot backends behind `robot.RobotInterface`: `fake` (pure Python), `sim` (MuJoCo), `unitree` (SDK2)."""
